//! The testbed's one error type. Each variant says what kind of thing went wrong; the message
//! says what to do about it, and [`Context`] adds the step that failed (shown first, the cause
//! as the error's source), as the CLI prints them.

/// Why a testbed operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Creating or using a network namespace, a veth or a program inside one failed.
    #[error(transparent)]
    Netns(#[from] portcullis_netns::Error),
    /// A file, socket or process could not be used.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A file or an answer was not the JSON expected.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// The manifests describe something the testbed cannot run.
    #[error("{0}")]
    Manifests(String),
    /// This machine lacks what the testbed needs (root, a program, a binary).
    #[error("{0}")]
    Environment(String),
    /// The request does not fit the testbed as it is (no such testbed or pod, already up).
    #[error("{0}")]
    Usage(String),
    /// A component did not start, answer or converge in time.
    #[error("{0}")]
    Timeout(String),
    /// A proxy's admin port answered something else than expected.
    #[error("{0}")]
    Answer(String),
    /// A worker thread panicked.
    #[error("{0} thread panicked")]
    Panicked(&'static str),
    /// A step failed: `what` names it, the source says why.
    #[error("{what}")]
    Context {
        what: String,
        #[source]
        source: Box<Error>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Names the step that failed, as `anyhow::Context` does, but keeping the error typed.
pub(crate) trait Context<T> {
    fn context(self, what: &str) -> Result<T>;
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, what: &str) -> Result<T> {
        self.with_context(|| what.to_string())
    }

    fn with_context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::Context {
            what: what(),
            source: Box::new(e.into()),
        })
    }
}
