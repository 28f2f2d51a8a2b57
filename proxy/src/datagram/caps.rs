//! `CAP_NET_ADMIN` from a file capability: Kubernetes gives a non-root container the
//! capabilities it adds in the bounding set only (the CRI sets no ambient capabilities), so a
//! proxy image carries `setcap cap_net_admin+p` on its binary and the proxy raises the capability
//! into its effective set itself, before any thread exists (capabilities are per thread, and
//! threads inherit them). With `+p` and no `+e`, a pod without `NET_ADMIN` in its bounding set
//! (`PORTCULLIS_ENFORCE_UDP=false`) still starts: the capability is simply not there.

use std::io;

const CAP_NET_ADMIN: u32 = 12;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct Header {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Makes `CAP_NET_ADMIN` effective when it is permitted. Returns whether it is effective now.
/// Call it before starting any thread.
pub fn raise_net_admin() -> io::Result<bool> {
    let mut header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget with version 3 writes two `Data` structs (capability bits 0-31, 32-63)
    // into the array passed, which has exactly two.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_capget,
            &mut header as *mut Header,
            data.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let bit = 1u32 << CAP_NET_ADMIN;
    if data[0].effective & bit != 0 {
        return Ok(true);
    }
    if data[0].permitted & bit == 0 {
        return Ok(false);
    }
    data[0].effective |= bit;
    // SAFETY: capset with version 3 reads two `Data` structs from the array passed.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_capset,
            &mut header as *mut Header,
            data.as_ptr(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(true)
}
