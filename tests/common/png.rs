//! PNG files for the bad-input tests.

/// `png` with the size in its header set to `width` × `height` and the header's CRC-32 made
/// right again: a valid file up to its pixel data, which is too short for that size.
pub fn png_claiming(png: &[u8], width: u32, height: u32) -> Vec<u8> {
    let mut h = png.to_vec();
    assert_eq!(&h[12..16], b"IHDR");
    h[16..20].copy_from_slice(&width.to_be_bytes());
    h[20..24].copy_from_slice(&height.to_be_bytes());
    // CRC-32 (ISO 3309, as PNG specifies) of the chunk's type and data.
    let mut crc = !0u32;
    for &byte in &h[12..29] {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    h[29..33].copy_from_slice(&(!crc).to_be_bytes());
    h
}
