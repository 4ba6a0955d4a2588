//! Carving one fuzz input into the several values a target needs: leading control bytes, and
//! length-prefixed frames for inputs made of several files.

/// Reads from the front of an input; past its end every read gives zeros or nothing, so
/// every input, however short, means something.
pub struct Input<'a> {
    bytes: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Input { bytes }
    }

    pub fn u8(&mut self) -> u8 {
        match self.bytes.split_first() {
            Some((&b, rest)) => {
                self.bytes = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    /// Up to `n` bytes.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.bytes.split_at(n.min(self.bytes.len()));
        self.bytes = rest;
        head
    }

    pub fn rest(self) -> &'a [u8] {
        self.bytes
    }

    /// Frames of `[tag: u8][length: u16 LE][length bytes]` until the input ends; a length
    /// past the end takes what is left.
    pub fn frames(mut self) -> Vec<(u8, &'a [u8])> {
        let mut frames = Vec::new();
        while !self.bytes.is_empty() {
            let tag = self.u8();
            let len = self.u16();
            frames.push((tag, self.take(len.into())));
        }
        frames
    }
}

/// The inverse of [`Input::frames`], for building seeds and tests.
pub fn frame(tag: u8, bytes: &[u8]) -> Vec<u8> {
    let len = u16::try_from(bytes.len()).expect("a frame holds at most 64 KiB");
    let mut out = vec![tag];
    out.extend(len.to_le_bytes());
    out.extend(bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_a_short_last_frame_keeps_its_bytes() {
        let mut bytes = frame(3, b"abc");
        bytes.extend(frame(0, b""));
        bytes.extend([7, 200, 0, b'x']);
        assert_eq!(
            Input::new(&bytes).frames(),
            [(3, &b"abc"[..]), (0, b""), (7, b"x")]
        );
    }
}
