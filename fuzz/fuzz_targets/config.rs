//! The configuration file (`fapi.toml`), from any text.
//!
//! Properties: nothing panics; an accepted configuration has an https issuer.
#![no_main]

use std::path::Path;

use fapi_host::{Overrides, Settings};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(settings) = Settings::from_toml(text, Path::new("/fuzz-base"), &Overrides::default())
    {
        let issuer = &settings.issuer_url;
        assert!(issuer.starts_with("https://"), "{issuer}");
    }
});
