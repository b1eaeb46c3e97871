//! fcsup's runtime agents, shipped inside the binary: each loops on the runtime API at
//! `$FC_RUNTIME_API` and runs FC 3.0 style handlers (`index.handler`) from `FC_FUNC_CODE_PATH`.
//! Standard library only, one file each, so the instance layer can write them anywhere and
//! run them with the host's interpreter.

/// The Python agent (`python3 bootstrap.py`).
pub const PYTHON: &str = include_str!("../../runtimes/python/bootstrap.py");

/// The Node.js agent (`node bootstrap.js`).
pub const NODE: &str = include_str!("../../runtimes/node/bootstrap.js");
