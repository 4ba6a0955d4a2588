#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| llava_fuzz_targets::torch_bin(data));
