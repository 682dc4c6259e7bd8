//! Container-bound listening sockets: see the crate docs. (Being written; see issue 5.)
