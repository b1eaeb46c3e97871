//! Splits a pipe's bytes into lines of at most [`MAX_LINE`] bytes in one fixed buffer, so a
//! function that never prints a newline costs fcsup no more memory than one that does.

/// Longest line kept whole (as Docker's log driver); longer ones are cut into pieces.
pub const MAX_LINE: usize = 16 * 1024;
/// The read buffer: room for a held partial line and at least as much again to read into.
const BUF: usize = 2 * MAX_LINE;

/// Line splitter over one pipe.
#[derive(Debug)]
pub struct Splitter {
    /// Bytes read and not yet handed on: at most [`MAX_LINE`] between reads, capacity [`BUF`].
    buf: Vec<u8>,
}

impl Default for Splitter {
    fn default() -> Self {
        Splitter { buf: Vec::with_capacity(BUF) }
    }
}

impl Splitter {
    /// The buffer to read into: bytes go into its spare capacity, which is never less than
    /// `MAX_LINE` (so a `read_buf` into it never grows it).
    pub fn buf(&mut self) -> &mut Vec<u8> {
        debug_assert!(self.buf.capacity() - self.buf.len() >= MAX_LINE);
        &mut self.buf
    }

    /// Hands on every complete line and every full [`MAX_LINE`] piece of the partial one, as
    /// `emit(bytes, continues)`; `continues` is true for a piece whose line goes on in the next.
    pub fn split(&mut self, mut emit: impl FnMut(&[u8], bool)) {
        let mut start = 0;
        while let Some(nl) = memchr::memchr(b'\n', &self.buf[start..]) {
            let line = &self.buf[start..start + nl];
            pieces(line.strip_suffix(b"\r").unwrap_or(line), true, &mut emit);
            start += nl + 1;
        }
        start += pieces(&self.buf[start..], false, &mut emit);
        self.buf.drain(..start);
    }

    /// At end of file: the rest, if any, as a last line.
    pub fn finish(&mut self, mut emit: impl FnMut(&[u8], bool)) {
        if !self.buf.is_empty() {
            pieces(&self.buf, true, &mut emit);
            self.buf.clear();
        }
    }
}

/// Emits `line` in pieces of at most [`MAX_LINE`] (cut on a UTF-8 character boundary where
/// there is one); with `whole` false the last piece is held back unless it is full. Returns
/// how many bytes were emitted.
fn pieces(mut line: &[u8], whole: bool, emit: &mut impl FnMut(&[u8], bool)) -> usize {
    let mut done = 0;
    while line.len() > MAX_LINE {
        let cut = (0..4).map(|k| MAX_LINE - k).find(|&c| line[c] & 0xC0 != 0x80).unwrap_or(MAX_LINE);
        emit(&line[..cut], true);
        line = &line[cut..];
        done += cut;
    }
    if whole {
        emit(line, false);
        done += line.len();
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(sp: &mut Splitter, data: &[u8], out: &mut Vec<(Vec<u8>, bool)>) {
        for chunk in data.chunks(MAX_LINE) {
            sp.buf().extend_from_slice(chunk);
            sp.split(|l, c| out.push((l.to_vec(), c)));
        }
    }

    #[test]
    fn lines_split_on_newlines_and_carriage_returns_go() {
        let (mut sp, mut out) = (Splitter::default(), Vec::new());
        feed(&mut sp, b"a\r\nbb\nc", &mut out);
        assert_eq!(out, vec![(b"a".to_vec(), false), (b"bb".to_vec(), false)]);
        sp.finish(|l, c| out.push((l.to_vec(), c)));
        assert_eq!(out[2], (b"c".to_vec(), false));
    }

    #[test]
    fn a_line_without_end_is_cut_and_the_buffer_stays_fixed() {
        let (mut sp, mut out) = (Splitter::default(), Vec::new());
        feed(&mut sp, &vec![b'x'; 10 * MAX_LINE + 5], &mut out);
        assert_eq!(out.len(), 10);
        assert!(out.iter().all(|(l, c)| l.len() == MAX_LINE && *c));
        assert_eq!(sp.buf().capacity(), BUF);
        feed(&mut sp, b"\n", &mut out);
        assert_eq!(out[10], (b"xxxxx".to_vec(), false));
    }

    #[test]
    fn a_cut_keeps_utf8_characters_whole() {
        let (mut sp, mut out) = (Splitter::default(), Vec::new());
        let mut line = vec![b'x'; MAX_LINE - 1];
        line.extend_from_slice("é and more\n".as_bytes());
        feed(&mut sp, &line, &mut out);
        assert_eq!(out[0].0.len(), MAX_LINE - 1);
        assert!(std::str::from_utf8(&out[1].0).unwrap().starts_with('é'));
    }
}
