//! End-to-end tests of the local federation over real TLS on loopback.

mod auth_server;
mod consent;
mod data_provider;
mod interop;
mod private_key_jwt;
mod support;
