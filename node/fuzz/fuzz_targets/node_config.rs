//! A node's `node.toml` (`NodeConfig::parse`: TOML, defaults, relative paths
//! resolved against the file's directory) and the multiaddrs the network
//! loop parses from it at start (`p2p_listen`, `peers`).
//!
//! Holds: no panic; the paths are resolved under the file's directory; a
//! config that parses, written back, parses to the same config.
#![no_main]

use std::path::Path;

use credence::config::NodeConfig;
use libfuzzer_sys::fuzz_target;
use libp2p::Multiaddr;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = Path::new("/etc/credence");
    let Ok(config) = NodeConfig::parse(&dir.join("node.toml"), text) else {
        return;
    };
    for path in [&config.genesis, &config.key, &config.data_dir] {
        assert!(
            path.starts_with(dir) || path.is_absolute(),
            "{path:?} escapes resolution"
        );
    }
    for addr in config.p2p_listen.iter().chain(&config.peers) {
        let _ = addr.parse::<Multiaddr>();
    }
    // Written back with absolute paths, it parses to the same config
    // anywhere.
    let text = match toml::to_string(&config) {
        Ok(text) => text,
        Err(e) => panic!("a parsed node config does not serialize: {e}"),
    };
    match NodeConfig::parse(Path::new("/elsewhere/node.toml"), &text) {
        Ok(again) => assert_eq!(format!("{again:?}"), format!("{config:?}")),
        Err(e) => panic!("a parsed node config written back does not parse: {e}\n{text}"),
    }
});
