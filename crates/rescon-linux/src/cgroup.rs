//! cgroups: see the crate docs. (Being written; see issue 4.)
