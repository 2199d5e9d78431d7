//! The RESP parser on arbitrary bytes, fed in arbitrary chunks: it must never panic, never
//! allocate beyond its limits, and consume only what it parsed.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mortar_cache::resp::{Limits, parse_command};

fuzz_target!(|data: &[u8]| {
    let limits = Limits { max_bulk: 4096, max_args: 256, max_inline: 1024 };
    let split = data.first().map_or(0, |b| *b as usize) % (data.len().max(1));
    let mut buf = BytesMut::new();
    for chunk in [&data[..split], &data[split..]] {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.len();
            match parse_command(&mut buf, &limits) {
                Ok(Some(args)) => {
                    assert!(args.len() <= limits.max_args);
                    assert!(args.iter().all(|a| a.len() <= limits.max_bulk.max(limits.max_inline)));
                    assert!(buf.len() < before, "a parsed command consumes input");
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "nothing consumed while waiting for more");
                    break;
                }
                Err(_) => return,
            }
        }
    }
});
