#!/usr/bin/env python3
"""Crafts the frames a hostile pod with CAP_NET_RAW sends, for tests/bridge.rs (standard
library only: AF_PACKET sockets).

  craft.py udp IFACE ETH_SRC ETH_DST SRC_IP DST_IP SPORT DPORT PAYLOAD
      one Ethernet frame carrying IPv4 or IPv6 UDP with any source address
  craft.py arp IFACE ETH_DST OP SENDER_MAC SENDER_IP TARGET_MAC TARGET_IP COUNT INTERVAL
      COUNT ARP packets (OP 1 request, 2 reply) from SENDER_MAC, every INTERVAL seconds
  craft.py na IFACE ETH_SRC ETH_DST SRC_IP DST_IP TARGET TLLA COUNT INTERVAL
      COUNT unsolicited neighbour advertisements (override) claiming TARGET is at TLLA
"""
import ipaddress
import socket
import struct
import sys
import time


def mac(text):
    return bytes(int(b, 16) for b in text.split(":"))


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_frame(eth_src, eth_dst, src, dst, sport, dport, payload):
    src, dst = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    length = 8 + len(payload)
    if src.version == 4:
        pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, 17, length)
    else:
        pseudo = src.packed + dst.packed + struct.pack("!I3xB", length, 17)
    header = struct.pack("!HHHH", sport, dport, length, 0)
    csum = checksum(pseudo + header + payload) or 0xFFFF
    udp = struct.pack("!HHHH", sport, dport, length, csum) + payload
    if src.version == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, 1, 0, 64, 17, 0,
                         src.packed, dst.packed)
        ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
        ethertype = 0x0800
    else:
        ip = struct.pack("!IHBB16s16s", 6 << 28, length, 17, 64, src.packed, dst.packed)
        ethertype = 0x86DD
    return mac(eth_dst) + mac(eth_src) + struct.pack("!H", ethertype) + ip + udp


def arp_frame(eth_dst, op, sender_mac, sender_ip, target_mac, target_ip):
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, mac(sender_mac),
                      ipaddress.ip_address(sender_ip).packed, mac(target_mac),
                      ipaddress.ip_address(target_ip).packed)
    return mac(eth_dst) + mac(sender_mac) + struct.pack("!H", 0x0806) + arp


def na_frame(eth_src, eth_dst, src, dst, target, tlla):
    src, dst = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    # Solicited and Override flags; the target link-layer address option.
    body = struct.pack("!I16s", 0x60000000, ipaddress.ip_address(target).packed)
    body += struct.pack("!BB6s", 2, 1, mac(tlla))
    length = 4 + len(body)
    pseudo = src.packed + dst.packed + struct.pack("!I3xB", length, 58)
    csum = checksum(pseudo + struct.pack("!BBH", 136, 0, 0) + body)
    icmp = struct.pack("!BBH", 136, 0, csum) + body
    ip = struct.pack("!IHBB16s16s", 6 << 28, length, 58, 255, src.packed, dst.packed)
    return mac(eth_dst) + mac(eth_src) + struct.pack("!H", 0x86DD) + ip + icmp


def main(argv):
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((argv[2], 0))
    if argv[1] == "udp":
        _, _, _, eth_src, eth_dst, src, dst, sport, dport, payload = argv
        sock.send(udp_frame(eth_src, eth_dst, src, dst, int(sport), int(dport),
                            payload.encode()))
    elif argv[1] == "arp":
        _, _, _, eth_dst, op, smac, sip, tmac, tip, count, interval = argv
        frame = arp_frame(eth_dst, int(op), smac, sip, tmac, tip)
        for _ in range(int(count)):
            sock.send(frame)
            time.sleep(float(interval))
    elif argv[1] == "na":
        _, _, _, eth_src, eth_dst, src, dst, target, tlla, count, interval = argv
        frame = na_frame(eth_src, eth_dst, src, dst, target, tlla)
        for _ in range(int(count)):
            sock.send(frame)
            time.sleep(float(interval))
    else:
        sys.exit("unknown command " + argv[1])


if __name__ == "__main__":
    main(sys.argv)
