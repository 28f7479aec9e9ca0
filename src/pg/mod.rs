//! The PostgreSQL wire protocol: startup, simple and extended query handling, and value
//! encoding in PostgreSQL's text and binary formats.

pub mod binary;
pub mod handler;
pub mod text;
