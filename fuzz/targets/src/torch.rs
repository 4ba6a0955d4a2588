//! `torch_bin`: a PyTorch `torch.save` zip archive (`pytorch_model.bin`), as the converter
//! reads it: the zip directory, then the pickle run by the allow-listed machine. Nothing in it
//! may run, and every tensor it gives must lie inside the file with as many bytes as its
//! shape and dtype say.

pub fn torch_bin(data: &[u8]) {
    let Ok(tensors) = llava_convert::read_torch_state_dict(data) else {
        return;
    };
    for t in tensors {
        assert!(t.start <= t.end && t.end <= data.len(), "{t:?}");
        let numel: usize = t.shape.iter().product();
        assert_eq!(t.end - t.start, numel * t.dtype.bitsize() / 8, "{t:?}");
    }
}
