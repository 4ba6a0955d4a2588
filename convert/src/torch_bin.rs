//! PyTorch checkpoints (`pytorch_model*.bin`, written by `torch.save`) read without executing
//! anything.
//!
//! Since PyTorch 1.6 such a file is a zip archive: `<name>/data.pkl` is a pickle of the state
//! dict, and each tensor storage is a stored (uncompressed) entry `<name>/data/<key>`. A pickle
//! is a program for a small stack machine; running it as Python does can call any function
//! (`os.system` included). This module runs only the opcodes a state dict needs and resolves
//! only an allow-list of globals: `collections.OrderedDict`, the tensor and parameter rebuild
//! functions of `torch._utils`, and the storage types. Anything else is refused with its name.
//! Tensors are not copied: each is a byte range of the memory-mapped archive, found through
//! the zip's directory, which is what the safetensors reader gives too.

use std::collections::HashMap;
use std::rc::Rc;

use safetensors::Dtype;

/// One tensor of the state dict: its dtype, PyTorch shape and byte range in the file.
#[derive(Clone, Debug, PartialEq)]
pub struct TorchTensor {
    /// The state dict's key.
    pub name: String,
    /// The element type, from the storage's type (`torch.HalfStorage`: F16).
    pub dtype: Dtype,
    /// PyTorch order: the last dimension is contiguous.
    pub shape: Vec<usize>,
    /// First byte in the archive.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

/// The state dict of a `torch.save` zip archive mapped in `bytes`. Errors are one line,
/// without the file's name (the caller adds it).
pub fn read_state_dict(bytes: &[u8]) -> Result<Vec<TorchTensor>, String> {
    if !bytes.starts_with(b"PK\x03\x04") {
        if bytes.starts_with(&[0x80]) {
            return Err(
                "is in PyTorch's legacy (before 1.6) format, which llava does not \
                        read: load it in Python and save it again with torch.save, or as \
                        safetensors"
                    .into(),
            );
        }
        return Err("is not a PyTorch zip archive (torch.save) nor safetensors".into());
    }
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| format!("is not a readable zip archive: {e}"))?;
    // Each entry's data range, by name; only stored entries can be read in place.
    let mut entries: HashMap<String, (usize, usize, bool)> = HashMap::new();
    for i in 0..zip.len() {
        let f = zip
            .by_index_raw(i)
            .map_err(|e| format!("zip entry {i}: {e}"))?;
        let name = f
            .name()
            .map_err(|e| format!("zip entry {i}: {e}"))?
            .into_owned();
        let stored = f.compression() == zip::CompressionMethod::Stored;
        let start = f
            .data_start()
            .ok_or_else(|| format!("zip entry {name:?}: no data offset"))?;
        let end = start
            .checked_add(f.compressed_size())
            .filter(|&e| e <= bytes.len() as u64)
            .ok_or_else(|| format!("zip entry {name:?} extends past the end of the file"))?;
        entries.insert(name, (start as usize, end as usize, stored));
    }
    let pkl_name = entries
        .keys()
        .filter(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .min()
        .cloned()
        .ok_or("has no data.pkl: not a torch.save archive")?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_owned();
    if let Some(&(s, e, true)) = entries.get(&format!("{prefix}byteorder")) {
        if &bytes[s..e] != b"little" {
            return Err("stores big-endian tensors, which llava does not read".into());
        }
    }
    let (s, e, stored) = entries[&pkl_name];
    if !stored {
        return Err(format!(
            "{pkl_name} is compressed; torch.save stores it uncompressed"
        ));
    }
    let root = Machine::default().run(&bytes[s..e])?;
    let dict = state_dict(&root)?;
    let mut out = Vec::with_capacity(dict.len());
    for (key, value) in dict.iter() {
        let Value::Str(name) = key else {
            return Err("a state dict key is not a string".into());
        };
        let Value::Tensor(t) = value else {
            // Non-tensor entries (a version number, say) carry no weights.
            continue;
        };
        let place = |what: String| format!("tensor {name:?}: {what}");
        let entry = format!("{prefix}data/{}", t.storage.key);
        let &(s, e, stored) = entries
            .get(&entry)
            .ok_or_else(|| place(format!("its storage {entry:?} is missing")))?;
        if !stored {
            return Err(place(format!("its storage {entry:?} is compressed")));
        }
        let size = t.storage.dtype_size;
        let numel = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        // Row-major strides, ignoring dimensions of one (their stride does not matter).
        let mut want = 1usize;
        let mut contiguous = true;
        for (&d, &st) in t.shape.iter().zip(&t.stride).rev() {
            if d != 1 && st != want {
                contiguous = false;
            }
            want = want.saturating_mul(d);
        }
        if !contiguous {
            return Err(place(format!(
                "not contiguous (shape {:?}, stride {:?}); save it with .contiguous()",
                t.shape, t.stride
            )));
        }
        let range = numel
            .and_then(|n| n.checked_add(t.offset))
            .filter(|&last| last <= t.storage.numel)
            .and_then(|_| {
                let start = s.checked_add(t.offset.checked_mul(size)?)?;
                let end = start.checked_add(numel?.checked_mul(size)?)?;
                (end <= e).then_some((start, end))
            })
            .ok_or_else(|| place("extends past the end of its storage".into()))?;
        let dtype = t.storage.dtype.ok_or_else(|| {
            place(format!(
                "storage type {} has no safetensors equivalent",
                t.storage.type_name
            ))
        })?;
        out.push(TorchTensor {
            name: name.to_string(),
            dtype,
            shape: t.shape.clone(),
            start: range.0,
            end: range.1,
        });
    }
    Ok(out)
}

/// The state dict in what the pickle built: the dict itself, or the dict under "state_dict"
/// or "model" of a training checkpoint.
fn state_dict(root: &Value) -> Result<Rc<Vec<(Value, Value)>>, String> {
    let Value::Dict(d) = root else {
        return Err(format!("holds {}, not a state dict", root.kind()));
    };
    if d.iter().any(|(_, v)| matches!(v, Value::Tensor(_))) {
        return Ok(Rc::clone(d));
    }
    for (k, v) in d.iter() {
        if let (Value::Str(k), Value::Dict(_)) = (k, v) {
            if &**k == "state_dict" || &**k == "model" {
                return state_dict(v);
            }
        }
    }
    Err("holds a dict without tensors, not a state dict".into())
}

/// A storage type: `torch.HalfStorage` and the like.
#[derive(Clone, Debug, PartialEq)]
struct StorageType {
    name: &'static str,
    dtype: Option<Dtype>,
    size: usize,
}

const STORAGE_TYPES: &[(&str, Option<Dtype>, usize)] = &[
    ("FloatStorage", Some(Dtype::F32), 4),
    ("HalfStorage", Some(Dtype::F16), 2),
    ("BFloat16Storage", Some(Dtype::BF16), 2),
    ("DoubleStorage", Some(Dtype::F64), 8),
    ("LongStorage", Some(Dtype::I64), 8),
    ("IntStorage", Some(Dtype::I32), 4),
    ("ShortStorage", Some(Dtype::I16), 2),
    ("CharStorage", Some(Dtype::I8), 1),
    ("ByteStorage", Some(Dtype::U8), 1),
    ("BoolStorage", Some(Dtype::BOOL), 1),
];

/// The globals a state dict may name.
#[derive(Clone, Debug, PartialEq)]
enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    Storage(StorageType),
}

fn global(module: &str, name: &str) -> Result<Global, String> {
    Ok(match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
        ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
        ("torch", n) => match STORAGE_TYPES.iter().find(|(t, ..)| *t == n) {
            Some(&(name, dtype, size)) => Global::Storage(StorageType { name, dtype, size }),
            None => return Err(refused(module, name)),
        },
        _ => return Err(refused(module, name)),
    })
}

fn refused(module: &str, name: &str) -> String {
    format!(
        "its pickle names {module}.{name}, which a state dict does not need: refused (a \
         pickle can run any Python function it names; only OrderedDict, torch tensors and \
         storages are allowed)"
    )
}

#[derive(Debug)]
struct Storage {
    key: String,
    type_name: &'static str,
    dtype: Option<Dtype>,
    dtype_size: usize,
    numel: usize,
}

#[derive(Debug)]
struct Tensor {
    storage: Rc<Storage>,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

/// A pickle value. Containers are shared (`Rc`), as Python's are through the memo, so a
/// pickle that refers to one list many times costs one list, not an exponential copy.
#[derive(Clone, Debug)]
enum Value {
    None,
    Bool,
    Int(i64),
    Float,
    Str(Rc<str>),
    /// Bytes (their content is never needed).
    Bytes,
    Tuple(Rc<Vec<Value>>),
    List(Rc<Vec<Value>>),
    Dict(Rc<Vec<(Value, Value)>>),
    Global(Global),
    Storage(Rc<Storage>),
    Tensor(Rc<Tensor>),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool => "a bool",
            Value::Int(_) => "an int",
            Value::Float => "a float",
            Value::Str(_) => "a string",
            Value::Bytes => "bytes",
            Value::Tuple(_) => "a tuple",
            Value::List(_) => "a list",
            Value::Dict(_) => "a dict",
            Value::Global(_) => "a class or function",
            Value::Storage(_) => "a storage",
            Value::Tensor(_) => "a tensor",
        }
    }

    fn usize(&self, what: &str) -> Result<usize, String> {
        match self {
            Value::Int(i) => usize::try_from(*i).map_err(|_| format!("{what} is negative")),
            v => Err(format!("{what} is {}, not an int", v.kind())),
        }
    }

    fn usizes(&self, what: &str) -> Result<Vec<usize>, String> {
        match self {
            Value::Tuple(t) => t.iter().map(|v| v.usize(what)).collect(),
            v => Err(format!("{what} is {}, not a tuple", v.kind())),
        }
    }
}

/// Limits that keep a hostile pickle from growing memory without bound: every opcode
/// consumes input, so these only matter for the few that build from what is already there.
const MAX_STACK: usize = 1 << 20;
const MAX_MEMO: usize = 1 << 22;
/// The total number of dimensions of all tensors: a shape tuple is built element by element,
/// so this is bounded by the pickle's length anyway; the cap keeps the error clear.
const MAX_DIMS: usize = 64;

#[derive(Default)]
struct Machine {
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
}

/// Reads the pickle's bytes in order.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or("the pickle ends in the middle of an opcode (truncated)")?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }

    /// A 64-bit length from the pickle, as a size in memory.
    fn length(n: u64) -> Result<usize, String> {
        usize::try_from(n).map_err(|_| "a length does not fit in memory".to_owned())
    }

    /// A line ending in '\n' (the text opcodes: GLOBAL's module and name).
    fn line(&mut self) -> Result<&'a str, String> {
        let rest = &self.bytes[self.pos..];
        let n = rest
            .iter()
            .take(256)
            .position(|&b| b == b'\n')
            .ok_or("a GLOBAL name is not terminated within 256 bytes")?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| "a GLOBAL name is not UTF-8")?;
        self.pos += n + 1;
        Ok(s)
    }

    fn utf8(&mut self, n: usize) -> Result<Rc<str>, String> {
        let b = self.take(n)?;
        Ok(Rc::from(
            std::str::from_utf8(b).map_err(|_| "a string is not UTF-8")?,
        ))
    }
}

impl Machine {
    fn push(&mut self, v: Value) -> Result<(), String> {
        if self.stack.len() >= MAX_STACK {
            return Err("the pickle's stack grows past 1M values".into());
        }
        self.stack.push(v);
        Ok(())
    }

    fn pop(&mut self) -> Result<Value, String> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err("the pickle pops an empty stack".into());
        }
        Ok(self.stack.pop().unwrap())
    }

    fn top(&mut self) -> Result<&mut Value, String> {
        self.stack
            .last_mut()
            .ok_or_else(|| "the pickle reads an empty stack".to_owned())
    }

    /// The values pushed since the last MARK, which is dropped.
    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let mark = self.marks.pop().ok_or("the pickle has no MARK to pop to")?;
        Ok(self.stack.split_off(mark))
    }

    fn memo_put(&mut self, key: u32) -> Result<(), String> {
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&key) {
            return Err("the pickle's memo grows past 4M values".into());
        }
        let v = self.top()?.clone();
        self.memo.insert(key, v);
        Ok(())
    }

    fn memo_get(&mut self, key: u32) -> Result<(), String> {
        let v = self
            .memo
            .get(&key)
            .cloned()
            .ok_or_else(|| format!("the pickle reads memo entry {key}, never written"))?;
        self.push(v)
    }

    fn run(mut self, pickle: &[u8]) -> Result<Value, String> {
        let mut r = Reader {
            bytes: pickle,
            pos: 0,
        };
        loop {
            let op = r.u8()?;
            match op {
                0x80 => {
                    // PROTO
                    let v = r.u8()?;
                    if v > 5 {
                        return Err(format!("pickle protocol {v} is unknown"));
                    }
                }
                0x95 => {
                    // FRAME: a length hint only.
                    r.u64()?;
                }
                b'.' => {
                    // STOP
                    let v = self.pop()?;
                    return Ok(v);
                }
                b'(' => {
                    self.marks.push(self.stack.len());
                    if self.marks.len() > MAX_STACK {
                        return Err("the pickle nests MARKs past 1M".into());
                    }
                }
                b'N' => self.push(Value::None)?,
                0x88 | 0x89 => self.push(Value::Bool)?,
                b'J' => {
                    let v = r.u32()? as i32;
                    self.push(Value::Int(v.into()))?
                }
                b'K' => {
                    let v = r.u8()?;
                    self.push(Value::Int(v.into()))?
                }
                b'M' => {
                    let v = r.u16()?;
                    self.push(Value::Int(v.into()))?
                }
                0x8a => {
                    // LONG1: a little-endian two's-complement integer of n bytes.
                    let n = r.u8()? as usize;
                    let b = r.take(n)?;
                    if n > 8 {
                        return Err("an integer wider than 64 bits".into());
                    }
                    let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                        [0xff; 8]
                    } else {
                        [0; 8]
                    };
                    buf[..n].copy_from_slice(b);
                    self.push(Value::Int(i64::from_le_bytes(buf)))?
                }
                b'G' => {
                    r.take(8)?;
                    self.push(Value::Float)?
                }
                b'X' => {
                    let n = r.u32()? as usize;
                    let s = r.utf8(n)?;
                    self.push(Value::Str(s))?
                }
                0x8c => {
                    let n = r.u8()? as usize;
                    let s = r.utf8(n)?;
                    self.push(Value::Str(s))?
                }
                0x8d => {
                    let n = r.u64()?;
                    let n = Reader::length(n)?;
                    let s = r.utf8(n)?;
                    self.push(Value::Str(s))?
                }
                b'U' | b'C' => {
                    // SHORT_BINSTRING, SHORT_BINBYTES
                    let n = r.u8()? as usize;
                    r.take(n)?;
                    self.push(Value::Bytes)?
                }
                b'T' | b'B' => {
                    // BINSTRING, BINBYTES
                    let n = r.u32()? as usize;
                    r.take(n)?;
                    self.push(Value::Bytes)?
                }
                0x8e => {
                    // BINBYTES8
                    let n = r.u64()?;
                    let n = Reader::length(n)?;
                    r.take(n)?;
                    self.push(Value::Bytes)?
                }
                b')' => self.push(Value::Tuple(Rc::new(Vec::new())))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(Rc::new(items)))?
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Value::Tuple(Rc::new(items)))?
                }
                b']' => self.push(Value::List(Rc::new(Vec::new())))?,
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(Rc::new(items)))?
                }
                b'}' => self.push(Value::Dict(Rc::new(Vec::new())))?,
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = pairs(items)?;
                    self.push(Value::Dict(Rc::new(pairs)))?
                }
                b'a' => {
                    let v = self.pop()?;
                    match self.top()? {
                        Value::List(l) => Rc::make_mut(l).push(v),
                        other => return Err(format!("APPEND to {}", other.kind())),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    match self.top()? {
                        Value::List(l) => Rc::make_mut(l).extend(items),
                        other => return Err(format!("APPENDS to {}", other.kind())),
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    match self.top()? {
                        Value::Dict(d) => Rc::make_mut(d).push((k, v)),
                        other => return Err(format!("SETITEM on {}", other.kind())),
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let new = pairs(items)?;
                    match self.top()? {
                        Value::Dict(d) => Rc::make_mut(d).extend(new),
                        other => return Err(format!("SETITEMS on {}", other.kind())),
                    }
                }
                b'q' => {
                    let k = r.u8()?;
                    self.memo_put(k.into())?
                }
                b'r' => {
                    let k = r.u32()?;
                    self.memo_put(k)?
                }
                0x94 => {
                    // MEMOIZE
                    let k = u32::try_from(self.memo.len()).map_err(|_| "memo overflow")?;
                    self.memo_put(k)?
                }
                b'h' => {
                    let k = r.u8()?;
                    self.memo_get(k.into())?
                }
                b'j' => {
                    let k = r.u32()?;
                    self.memo_get(k)?
                }
                b'c' => {
                    let module = r.line()?;
                    let name = r.line()?;
                    self.push(Value::Global(global(module, name)?))?
                }
                0x93 => {
                    // STACK_GLOBAL
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => {
                            self.push(Value::Global(global(&m, &n)?))?
                        }
                        _ => return Err("STACK_GLOBAL without two strings".into()),
                    }
                }
                b'Q' => {
                    // BINPERSID: torch's ('storage', type, key, location, numel).
                    let pid = self.pop()?;
                    let storage = persistent_storage(&pid)?;
                    self.push(Value::Storage(Rc::new(storage)))?
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let v = call(func, args)?;
                    self.push(v)?
                }
                0x81 => {
                    // NEWOBJ: cls.__new__(cls, *args); only OrderedDict is a class here.
                    let _args = self.pop()?;
                    match self.pop()? {
                        Value::Global(Global::OrderedDict) => {
                            self.push(Value::Dict(Rc::new(Vec::new())))?
                        }
                        other => return Err(format!("NEWOBJ of {}", other.kind())),
                    }
                }
                b'b' => {
                    // BUILD: the object's state. A state dict's `_metadata` (per-module
                    // versions) is not needed.
                    let _state = self.pop()?;
                    match self.top()? {
                        Value::Dict(_) | Value::Tensor(_) => {}
                        other => return Err(format!("BUILD on {}", other.kind())),
                    }
                }
                b'0' => {
                    self.pop()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v)?
                }
                b'1' => {
                    self.pop_mark()?;
                }
                other => {
                    return Err(format!(
                        "its pickle uses opcode 0x{other:02x} at byte {}, which a state dict \
                         does not need: refused",
                        r.pos - 1
                    ))
                }
            }
        }
    }
}

fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>, String> {
    if !items.len().is_multiple_of(2) {
        return Err("a dict with an odd number of keys and values".into());
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

fn persistent_storage(pid: &Value) -> Result<Storage, String> {
    let Value::Tuple(t) = pid else {
        return Err(format!("a persistent id is {}, not a tuple", pid.kind()));
    };
    match t.as_slice() {
        [Value::Str(tag), Value::Global(Global::Storage(ty)), Value::Str(key), _location, numel]
            if &**tag == "storage" =>
        {
            // The key names a zip entry: digits (or a plain name), never a path.
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!("a storage key {key:?} is not a plain name"));
            }
            Ok(Storage {
                key: key.to_string(),
                type_name: ty.name,
                dtype: ty.dtype,
                dtype_size: ty.size,
                numel: numel.usize("a storage's size")?,
            })
        }
        _ => Err("a persistent id is not torch's ('storage', type, key, location, size)".into()),
    }
}

/// REDUCE: calls one of the allowed functions.
fn call(func: Value, args: Value) -> Result<Value, String> {
    let Value::Tuple(args) = args else {
        return Err(format!("REDUCE with {} for arguments", args.kind()));
    };
    match func {
        Value::Global(Global::OrderedDict) => match args.as_slice() {
            [] => Ok(Value::Dict(Rc::new(Vec::new()))),
            _ => Err("OrderedDict called with arguments".into()),
        },
        Value::Global(Global::RebuildTensorV2) => match args.as_slice() {
            // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
            [Value::Storage(s), offset, size, stride, ..] if args.len() >= 6 => {
                let shape = size.usizes("a tensor's size")?;
                let stride = stride.usizes("a tensor's stride")?;
                if shape.len() != stride.len() || shape.len() > MAX_DIMS {
                    return Err("a tensor's size and stride disagree".into());
                }
                Ok(Value::Tensor(Rc::new(Tensor {
                    storage: Rc::clone(s),
                    offset: offset.usize("a tensor's storage offset")?,
                    shape,
                    stride,
                })))
            }
            _ => {
                Err("_rebuild_tensor_v2 called without (storage, offset, size, stride, ...)".into())
            }
        },
        Value::Global(Global::RebuildParameter) => match args.as_slice() {
            [t @ Value::Tensor(_), ..] => Ok(t.clone()),
            _ => Err("_rebuild_parameter called without a tensor".into()),
        },
        other => Err(format!(
            "REDUCE calls {}, which is not allowed",
            other.kind()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pickle of protocol 2 from its opcodes.
    fn run(ops: &[u8]) -> Result<Value, String> {
        Machine::default().run(ops)
    }

    #[test]
    fn a_small_state_dict_pickle_is_understood() {
        // OrderedDict([("w", _rebuild_tensor_v2(pid, 2, (2, 3), (3, 1), False, OrderedDict()))])
        let mut p = vec![0x80, 2];
        p.extend(b"ccollections\nOrderedDict\nq\x00)Rq\x01");
        p.extend(b"X\x01\x00\x00\x00w");
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        p.extend(b"(X\x07\x00\x00\x00storagectorch\nHalfStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x08tQ");
        p.extend(b"K\x02K\x02K\x03\x86K\x03K\x01\x86\x89ccollections\nOrderedDict\n)RtR");
        p.extend(b"s.");
        let v = run(&p).unwrap();
        let d = state_dict(&v).unwrap();
        let (Value::Str(k), Value::Tensor(t)) = &d[0] else {
            panic!("{d:?}")
        };
        assert_eq!(&**k, "w");
        assert_eq!(
            (t.offset, &t.shape[..], &t.stride[..]),
            (2, &[2, 3][..], &[3, 1][..])
        );
        assert_eq!((t.storage.key.as_str(), t.storage.numel), ("0", 8));
        assert_eq!(t.storage.dtype, Some(Dtype::F16));
    }

    #[test]
    fn hostile_pickles_are_refused_with_a_reason() {
        let cases: &[(&[u8], &str)] = &[
            (b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00idtR.", "os.system"),
            (b"\x80\x02cbuiltins\neval\n.", "builtins.eval"),
            (b"\x80\x02ctorch\nload\n.", "torch.load"),
            // STACK_GLOBAL (protocol 4) is checked too.
            (b"\x80\x04\x8c\x02os\x8c\x06system\x93.", "os.system"),
            (b"\x80\x02X\xff\xff\xff\x7fabc", "truncated"),
            (b"\x80\x02}q\x00", "truncated"),
            (b"\x80\x02h\x05.", "never written"),
            (b"\x80\x02.", "empty stack"),
            (b"\x80\x02i__main__\nEvil\n.", "opcode 0x69"),
            (b"\x80\x02ccollections\nOrderedDict\nX\x01\x00\x00\x00a\x85R.", "with arguments"),
            (b"\x80\x02c__builtin__\nset\n.", "__builtin__.set"),
            (b"\x80\x02(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x05\x00\x00\x00../..X\x03\x00\x00\x00cpuK\x01tQ.", "not a plain name"),
        ];
        for (pickle, want) in cases {
            let e = run(pickle).unwrap_err();
            assert!(e.contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn shared_references_do_not_blow_up() {
        // A list of 16 references to the memoized previous list, 40 times over: 16^40 leaves
        // if copied, one list each if shared.
        let mut p = vec![0x80, 2, b']', b'q', 0];
        for _ in 0..40 {
            p.push(b'(');
            p.extend(std::iter::repeat_n([b'h', 0], 16).flatten());
            p.extend(b"lq\x00");
        }
        p.push(b'.');
        let v = run(&p).unwrap();
        assert!(matches!(&v, Value::List(l) if l.len() == 16));
        assert!(state_dict(&v).unwrap_err().contains("not a state dict"));
    }

    #[test]
    fn files_that_are_not_torch_zips_are_named_as_such() {
        assert!(read_state_dict(b"\x80\x02\x8a\x0alegacy")
            .unwrap_err()
            .contains("legacy"));
        assert!(read_state_dict(b"hello")
            .unwrap_err()
            .contains("not a PyTorch zip"));
        assert!(read_state_dict(b"PK\x03\x04truncated")
            .unwrap_err()
            .contains("zip"));
    }
}
