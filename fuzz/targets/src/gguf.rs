//! `gguf_reader`: the GGUF header, metadata and tensor table, read from arbitrary bytes the
//! way `llava inspect` and the loaders read them, then every tensor's data dequantized.

use llava_runtime::gguf::{file_type_name, GgufFile, Value, KEY_FILE_TYPE};
use llava_runtime::quant::{dequantize_row, is_supported};

pub fn gguf_reader(data: &[u8]) {
    let Ok(file) = GgufFile::from_bytes("fuzz.gguf", data.to_vec()) else {
        return;
    };
    assert!(file.alignment().is_power_of_two());
    assert_eq!(file.metadata().count(), file.metadata_len());
    for (key, value) in file.metadata() {
        read_every_way(&file, key, &value);
    }
    if let Ok(ft) = file.get_u32(KEY_FILE_TYPE) {
        let _ = file_type_name(ft);
    }

    assert_eq!(file.tensors().count(), file.tensor_count());
    for (index, t) in file.tensors().enumerate() {
        assert_eq!(file.tensor_index(t.name()), Some(index));
        assert_eq!(file.tensor(t.name()).map(|u| u.info), Some(t.info));
        assert_eq!(t.data.len() as u64, t.n_bytes());
        assert!(
            t.n_bytes() == 0 || file.data_offset() + t.offset() + t.n_bytes() <= file.file_size()
        );
        if t.n_elements() == 0 {
            // An empty tensor; its row length may be any multiple of the block size.
            assert_eq!(t.n_bytes(), 0);
            continue;
        }
        let ty = t.ggml_type();
        let row_len = t.shape().first().copied().unwrap_or(1);
        let n_rows = t.n_elements() / row_len;
        let row_bytes = ty
            .row_bytes(row_len)
            .expect("whole blocks, checked at open");
        assert_eq!(row_bytes * n_rows, t.n_bytes(), "{:?}", t.info);
        // Every element takes some of the input's bytes, so this is bounded by its length.
        if is_supported(ty) {
            let mut row = vec![0f32; row_len as usize];
            for src in t.data.chunks_exact(row_bytes as usize) {
                // Misaligned data is an error, not a crash.
                let _ = dequantize_row(ty, src, &mut row);
            }
        }
    }
}

/// Every typed getter on `key`: each must answer or refuse, and agree with the value itself.
fn read_every_way(file: &GgufFile, key: &str, value: &Value<'_>) {
    assert_eq!(
        file.get(key).map(|v| v.value_type()),
        Some(value.value_type())
    );
    let _ = format!("{value:?}");
    let _ = value.to_owned_value();
    assert_eq!(file.get_u64(key).ok(), value.as_u64());
    let _ = (file.get_u32(key), file.get_i64(key), file.get_f32(key));
    let _ = (file.get_bool(key), file.get_str(key));
    if let Value::Array(a) = value {
        assert_eq!(a.iter().count(), a.len());
        if let Ok(strings) = file.get_str_array(key) {
            assert_eq!(strings.count(), a.len());
        }
        assert_eq!(
            file.get_array_of::<u8>(key).map(|v| v.count()).ok(),
            a.to_vec::<u8>().map(|v| v.len())
        );
        let _ = file.get_array_of::<i32>(key).map(|v| v.count());
        let _ = file.get_array_of::<u32>(key).map(|v| v.count());
        let _ = file.get_array_of::<f32>(key).map(|v| v.count());
        let _ = file.get_array_of::<i64>(key).map(|v| v.count());
        let _ = file.get_array_of::<f64>(key).map(|v| v.count());
        let _ = a.as_slice::<f32>();
    }
}
