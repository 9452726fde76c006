//! The longer documentation pages (`docs/*.md` in the repository), rendered by rustdoc so that
//! the links of the front page (the README) and of the pages themselves work here too.
//!
//! Each page's links to another page are reference links defined at the page's end (for
//! GitHub); the definitions given here come first and win, pointing at the modules below.

#[doc = "[README]: crate"]
#[doc = include_str!("../docs/benchmarks.md")]
pub mod benchmarks {}

#[doc = include_str!("../docs/cli.md")]
pub mod cli {}

#[doc = "[cli.md]: crate::guide::cli"]
#[doc = include_str!("../docs/docker.md")]
pub mod docker {}

#[doc = include_str!("../docs/testing.md")]
pub mod testing {}

#[doc = include_str!("../docs/architecture.md")]
pub mod architecture {}

#[doc = include_str!("../docs/primitives.md")]
pub mod primitives {}
