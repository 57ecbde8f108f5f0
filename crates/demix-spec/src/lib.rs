//! What the ML library, the step kinds and the report share without libtorch:
//! one type for each configuration (a model's, a training's, an evaluation's,
//! a tokenizer's) as the manifest writes it and the library takes it, the
//! formats of the files they exchange, and estimates made before anything is
//! allocated.

pub mod card;
pub mod corpus;
pub mod data;
pub mod estimate;
pub mod evaluate;
pub mod launch;
pub mod model;
pub mod rng;
pub mod tokenizer;
pub mod train;
