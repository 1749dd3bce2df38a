//! Feeds arbitrary bytes to the agent's config parser and validator: any
//! input must give `Ok` or a `ConfigError`, never a panic (the one-line
//! error message is built from byte spans of the input, which is where an
//! off-by-one on a multi-byte character would panic).
#![no_main]

use libfuzzer_sys::fuzz_target;
use slicetrace_agent::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml(src) {
        Ok(mut cfg) => {
            // Never touch the real file system from the fuzzer: validate
            // checks that data_dir is writable, and a fuzzed path could
            // point anywhere.
            cfg.data_dir = std::env::temp_dir();
            let _ = cfg.validate();
            let _ = cfg.probe_spec("cpu");
            let _ = cfg.probe_spec("cuda");
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "config errors are one line: {msg:?}");
        }
    }
});
