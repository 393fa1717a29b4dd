//! Test support for the registry client tests: the real registry as a child process,
//! pushing content, a token service, a test PKI, loopback proxies and a tiny HTTP server.

#![allow(dead_code)]

pub mod client;
pub mod http;
pub mod proxy;
pub mod registry;
pub mod tls;
pub mod token;
