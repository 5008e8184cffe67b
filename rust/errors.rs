//! The one place where the Rust core turns its errors into Python exceptions.
//!
//! The exception classes are defined in Python (`helixrt.errors`), because each derives from both
//! `HelixError` and the standard type a user would catch (`KeyError`, `TimeoutError`, ...), which
//! `create_exception!` cannot express. They are imported once, on the first error.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

/// An error raised by the Rust core, before it becomes a Python exception.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A bad argument: the message names it and says what is accepted.
    InvalidArgument(String),
    /// A value of the wrong type.
    WrongType(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::InvalidArgument(msg) | Error::WrongType(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for Error {}

impl From<Error> for PyErr {
    #[cold]
    fn from(err: Error) -> PyErr {
        Python::attach(|py| match err {
            Error::InvalidArgument(msg) => helix_error(py, "InvalidArgumentError", msg),
            Error::WrongType(msg) => helix_error(py, "InvalidTypeError", msg),
        })
    }
}

/// A `PyErr` of the `helixrt.errors` class `name`, made with `args` (a message, or for
/// `CacheKeyError` the key, as `KeyError` carries it).
#[cold]
pub fn helix_error<A>(py: Python<'_>, name: &str, args: A) -> PyErr
where
    A: pyo3::PyErrArguments + Send + Sync + 'static,
{
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    let class = MODULE
        .get_or_try_init(py, || Ok::<_, PyErr>(py.import("helixrt.errors")?.unbind()))
        .and_then(|module| module.bind(py).getattr(name))
        .and_then(|class| Ok(class.cast_into::<PyType>()?));
    match class {
        Ok(class) => PyErr::from_type(class, args),
        Err(err) => err,
    }
}
