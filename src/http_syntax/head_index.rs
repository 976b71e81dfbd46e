//! Where the parts of an HTTP/1 request head lie, as the front door's scan found them
//! (`crate::ingress::scan_head_indexed`, which checks every line), so that a later reader (the
//! hit lane) slices the head instead of parsing it a second time.

/// Most field lines an index holds; a head with more has none indexed ([`HeadIndex::fields`]).
pub const MAX_FIELDS: usize = 64;

/// One field line: the byte ranges of its name and of its value (without the whitespace around
/// it), in the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FieldSpan {
    name_start: u32,
    name_end: u32,
    value_start: u32,
    value_end: u32,
}

impl FieldSpan {
    /// The name's bytes in `head`; empty when `head` is not the head indexed.
    pub fn name<'h>(&self, head: &'h [u8]) -> &'h [u8] {
        head.get(self.name_start as usize..self.name_end as usize)
            .unwrap_or_default()
    }

    /// The value's bytes in `head`; empty when `head` is not the head indexed.
    pub fn value<'h>(&self, head: &'h [u8]) -> &'h [u8] {
        head.get(self.value_start as usize..self.value_end as usize)
            .unwrap_or_default()
    }
}

/// The parts of one request head, as offsets into the buffer it was scanned in. Filled line by
/// line as the scan judges them; only a scan that found the head whole leaves it complete.
#[derive(Debug, Clone)]
pub struct HeadIndex {
    method: (u32, u32),
    target: (u32, u32),
    /// The request line says HTTP/1.0 (else HTTP/1.1).
    pub http10: bool,
    /// The head holds a byte that `httparse` (Pingora's parser) refuses although the scan
    /// takes it: a CR without its LF among the empty lines before the request line, or a
    /// control character (other than a tab) in a field value. Readers that must read a head
    /// as Pingora would leave such a head to Pingora.
    pub lenient_bytes: bool,
    fields: [FieldSpan; MAX_FIELDS],
    /// Field lines seen, also past [`MAX_FIELDS`].
    count: usize,
    /// Offsets did not fit in `u32`: nothing is indexed.
    overflow: bool,
    /// The whole head's length, its final empty line included, once the scan found it whole.
    head_len: Option<usize>,
}

impl Default for HeadIndex {
    fn default() -> Self {
        HeadIndex::new()
    }
}

fn offset(at: usize, overflow: &mut bool) -> u32 {
    u32::try_from(at).unwrap_or_else(|_| {
        *overflow = true;
        0
    })
}

impl HeadIndex {
    /// An empty index.
    pub fn new() -> Self {
        HeadIndex {
            method: (0, 0),
            target: (0, 0),
            http10: false,
            lenient_bytes: false,
            fields: [FieldSpan::default(); MAX_FIELDS],
            count: 0,
            overflow: false,
            head_len: None,
        }
    }

    /// Start over for a new scan of a head.
    pub fn clear(&mut self) {
        self.count = 0;
        self.lenient_bytes = false;
        self.overflow = false;
        self.head_len = None;
    }

    /// The head is whole: `len` bytes, its final empty line included.
    pub fn complete(&mut self, len: usize) {
        self.head_len = Some(len);
    }

    /// The whole head's length, when the scan found it whole.
    pub fn head_len(&self) -> Option<usize> {
        self.head_len
    }

    /// The request line's method and target, each as (start, end) offsets.
    pub fn set_request_line(&mut self, method: (usize, usize), target: (usize, usize)) {
        let o = &mut self.overflow;
        self.method = (offset(method.0, o), offset(method.1, o));
        self.target = (offset(target.0, o), offset(target.1, o));
    }

    /// Add a field line whose name is at `name` and value at `value` (start and end offsets).
    pub fn push_field(&mut self, name: (usize, usize), value: (usize, usize)) {
        if let Some(slot) = self.fields.get_mut(self.count) {
            let o = &mut self.overflow;
            *slot = FieldSpan {
                name_start: offset(name.0, o),
                name_end: offset(name.1, o),
                value_start: offset(value.0, o),
                value_end: offset(value.1, o),
            };
        }
        self.count += 1;
    }

    /// The method's bytes in `head`; `None` when nothing could be indexed.
    pub fn method<'h>(&self, head: &'h [u8]) -> Option<&'h [u8]> {
        let (start, end) = self.method;
        head.get(start as usize..end as usize)
            .filter(|_| !self.overflow)
    }

    /// The request target's bytes in `head`; `None` when nothing could be indexed.
    pub fn target<'h>(&self, head: &'h [u8]) -> Option<&'h [u8]> {
        let (start, end) = self.target;
        head.get(start as usize..end as usize)
            .filter(|_| !self.overflow)
    }

    /// Every field line, in order; `None` when there are more than [`MAX_FIELDS`] or nothing
    /// could be indexed.
    pub fn fields(&self) -> Option<&[FieldSpan]> {
        if self.overflow {
            return None;
        }
        self.fields.get(..self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_slice_the_head_they_index() {
        let head = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut index = HeadIndex::new();
        index.set_request_line((0, 3), (4, 6));
        index.push_field((17, 21), (23, 24));
        assert_eq!(index.method(head), Some(&b"GET"[..]));
        assert_eq!(index.target(head), Some(&b"/a"[..]));
        let fields = index.fields().expect("indexed");
        assert_eq!(
            (fields[0].name(head), fields[0].value(head)),
            (&b"Host"[..], &b"x"[..])
        );
        index.clear();
        assert_eq!(index.fields().map(<[_]>::len), Some(0));
        for _ in 0..=MAX_FIELDS {
            index.push_field((17, 21), (23, 24));
        }
        assert_eq!(index.fields(), None);
    }
}
