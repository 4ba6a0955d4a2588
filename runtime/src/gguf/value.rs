//! Metadata values: borrowed views for reading ([`Value`], [`ArrayView`]) and owned values for
//! writing ([`MetaValue`]).

use std::fmt;

/// The on-disk id of a metadata value type (GGUF-AND-LLAVA.md §1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ValueType {
    /// Unsigned 8-bit integer.
    U8 = 0,
    /// Signed 8-bit integer.
    I8 = 1,
    /// Unsigned 16-bit integer.
    U16 = 2,
    /// Signed 16-bit integer.
    I16 = 3,
    /// Unsigned 32-bit integer.
    U32 = 4,
    /// Signed 32-bit integer.
    I32 = 5,
    /// 32-bit float.
    F32 = 6,
    /// Boolean, one byte; any non-zero byte reads as true.
    Bool = 7,
    /// UTF-8 string: a u64 byte length, then the bytes (no terminating NUL).
    String = 8,
    /// Array: a u32 element type, a u64 count, then the elements. Elements are never arrays.
    Array = 9,
    /// Unsigned 64-bit integer.
    U64 = 10,
    /// Signed 64-bit integer.
    I64 = 11,
    /// 64-bit float.
    F64 = 12,
}

impl ValueType {
    /// The type with on-disk id `id`, or `None` for an unknown id.
    pub fn from_id(id: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// The on-disk id.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// Bytes of one value of a fixed-size type; `None` for strings and arrays.
    pub fn fixed_size(self) -> Option<usize> {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            String | Array => None,
        }
    }

    /// The lowercase name used in messages, e.g. `u32`, `string`.
    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A metadata value borrowed from the file. Strings and arrays point into the map.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    /// See [`ValueType::U8`].
    U8(u8),
    /// See [`ValueType::I8`].
    I8(i8),
    /// See [`ValueType::U16`].
    U16(u16),
    /// See [`ValueType::I16`].
    I16(i16),
    /// See [`ValueType::U32`].
    U32(u32),
    /// See [`ValueType::I32`].
    I32(i32),
    /// See [`ValueType::F32`].
    F32(f32),
    /// See [`ValueType::Bool`].
    Bool(bool),
    /// A string, borrowed from the file.
    String(&'a str),
    /// An array, borrowed from the file.
    Array(ArrayView<'a>),
    /// See [`ValueType::U64`].
    U64(u64),
    /// See [`ValueType::I64`].
    I64(i64),
    /// See [`ValueType::F64`].
    F64(f64),
}

impl<'a> Value<'a> {
    /// The type of this value.
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// Decodes a fixed-size scalar from exactly `ty.fixed_size()` little-endian bytes. The
    /// caller has checked the length.
    pub(crate) fn decode_scalar(ty: ValueType, b: &[u8]) -> Value<'static> {
        let a2 = || [b[0], b[1]];
        let a4 = || [b[0], b[1], b[2], b[3]];
        let a8 = || [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]];
        match ty {
            ValueType::U8 => Value::U8(b[0]),
            ValueType::I8 => Value::I8(b[0] as i8),
            ValueType::Bool => Value::Bool(b[0] != 0),
            ValueType::U16 => Value::U16(u16::from_le_bytes(a2())),
            ValueType::I16 => Value::I16(i16::from_le_bytes(a2())),
            ValueType::U32 => Value::U32(u32::from_le_bytes(a4())),
            ValueType::I32 => Value::I32(i32::from_le_bytes(a4())),
            ValueType::F32 => Value::F32(f32::from_le_bytes(a4())),
            ValueType::U64 => Value::U64(u64::from_le_bytes(a8())),
            ValueType::I64 => Value::I64(i64::from_le_bytes(a8())),
            ValueType::F64 => Value::F64(f64::from_le_bytes(a8())),
            ValueType::String | ValueType::Array => {
                unreachable!("decode_scalar is only called for fixed-size types")
            }
        }
    }

    /// Any integer type that fits in `u64` without loss.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any float type, widened.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => None,
        }
    }

    /// An owned copy, as the writer takes it.
    pub fn to_owned_value(&self) -> MetaValue {
        match *self {
            Value::U8(v) => MetaValue::U8(v),
            Value::I8(v) => MetaValue::I8(v),
            Value::U16(v) => MetaValue::U16(v),
            Value::I16(v) => MetaValue::I16(v),
            Value::U32(v) => MetaValue::U32(v),
            Value::I32(v) => MetaValue::I32(v),
            Value::F32(v) => MetaValue::F32(v),
            Value::Bool(v) => MetaValue::Bool(v),
            Value::String(v) => MetaValue::String(v.to_owned()),
            Value::U64(v) => MetaValue::U64(v),
            Value::I64(v) => MetaValue::I64(v),
            Value::F64(v) => MetaValue::F64(v),
            Value::Array(a) => MetaValue::Array(a.to_owned_array()),
        }
    }
}

/// An array of metadata values borrowed from the file. The reader has checked that all `len`
/// elements lie inside `bytes` and that strings are valid UTF-8.
#[derive(Clone, Copy, PartialEq)]
pub struct ArrayView<'a> {
    elem_type: ValueType,
    len: usize,
    bytes: &'a [u8],
}

impl fmt::Debug for ArrayView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}; {}]", self.elem_type, self.len)
    }
}

impl<'a> ArrayView<'a> {
    /// `bytes` must hold exactly `len` validated elements of `elem_type` (never `Array`).
    pub(crate) fn new(elem_type: ValueType, len: usize, bytes: &'a [u8]) -> Self {
        debug_assert!(elem_type != ValueType::Array);
        ArrayView {
            elem_type,
            len,
            bytes,
        }
    }

    /// The type of every element.
    pub fn elem_type(&self) -> ValueType {
        self.elem_type
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The raw little-endian element bytes (for fixed-size types).
    pub fn raw_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Every element as a [`Value`].
    pub fn iter(&self) -> ArrayIter<'a> {
        ArrayIter {
            elem_type: self.elem_type,
            remaining: self.len,
            bytes: self.bytes,
        }
    }

    /// The elements as strings, if this is an array of strings.
    pub fn strings(&self) -> Option<impl ExactSizeIterator<Item = &'a str> + 'a> {
        (self.elem_type == ValueType::String).then(|| {
            self.iter().map(|v| match v {
                Value::String(s) => s,
                _ => unreachable!("a string array yields strings"),
            })
        })
    }

    /// The elements as `T`, if the element type is exactly `T`'s.
    pub fn values<T: ArrayElement>(&self) -> Option<impl ExactSizeIterator<Item = T> + 'a> {
        (self.elem_type == T::TYPE).then(|| {
            self.bytes
                .chunks_exact(std::mem::size_of::<T>())
                .map(T::from_le_slice)
        })
    }

    /// The elements as a borrowed slice, if the element type is `T`'s and the bytes happen to
    /// be aligned for `T` (strings before an array can leave any alignment).
    pub fn as_slice<T: ArrayElement>(&self) -> Option<&'a [T]> {
        if self.elem_type != T::TYPE || cfg!(target_endian = "big") {
            return None;
        }
        bytemuck::try_cast_slice(self.bytes).ok()
    }

    /// The elements copied into a `Vec<T>`, if the element type is exactly `T`'s.
    pub fn to_vec<T: ArrayElement>(&self) -> Option<Vec<T>> {
        Some(self.values::<T>()?.collect())
    }

    fn to_owned_array(self) -> MetaArray {
        fn collect<T: ArrayElement>(a: &ArrayView<'_>) -> Vec<T> {
            a.to_vec().expect("element type checked by the caller")
        }
        match self.elem_type {
            ValueType::U8 => MetaArray::U8(collect(&self)),
            ValueType::I8 => MetaArray::I8(collect(&self)),
            ValueType::U16 => MetaArray::U16(collect(&self)),
            ValueType::I16 => MetaArray::I16(collect(&self)),
            ValueType::U32 => MetaArray::U32(collect(&self)),
            ValueType::I32 => MetaArray::I32(collect(&self)),
            ValueType::F32 => MetaArray::F32(collect(&self)),
            ValueType::U64 => MetaArray::U64(collect(&self)),
            ValueType::I64 => MetaArray::I64(collect(&self)),
            ValueType::F64 => MetaArray::F64(collect(&self)),
            ValueType::Bool => MetaArray::Bool(self.bytes.iter().map(|&b| b != 0).collect()),
            ValueType::String => MetaArray::String(
                self.strings()
                    .expect("string array")
                    .map(str::to_owned)
                    .collect(),
            ),
            ValueType::Array => unreachable!("nested arrays are rejected by the reader"),
        }
    }
}

/// Iterates the elements of an [`ArrayView`].
pub struct ArrayIter<'a> {
    elem_type: ValueType,
    remaining: usize,
    bytes: &'a [u8],
}

impl<'a> Iterator for ArrayIter<'a> {
    type Item = Value<'a>;

    fn next(&mut self) -> Option<Value<'a>> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        // The reader validated every element, so the slicing below stays in bounds.
        if self.elem_type == ValueType::String {
            let (len, rest) = self.bytes.split_at(8);
            let len = u64::from_le_bytes(len.try_into().expect("8 bytes")) as usize;
            let (s, rest) = rest.split_at(len);
            self.bytes = rest;
            Some(Value::String(
                std::str::from_utf8(s).expect("validated by the reader"),
            ))
        } else {
            let size = self.elem_type.fixed_size().expect("fixed-size element");
            let (v, rest) = self.bytes.split_at(size);
            self.bytes = rest;
            Some(Value::decode_scalar(self.elem_type, v))
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for ArrayIter<'_> {}

/// A numeric type that can be an array element.
pub trait ArrayElement: bytemuck::Pod {
    /// The metadata type whose elements are `Self`.
    const TYPE: ValueType;
    /// Decodes one element from exactly `size_of::<Self>()` little-endian bytes.
    fn from_le_slice(b: &[u8]) -> Self;
}

macro_rules! array_element {
    ($($t:ty => $v:ident),*) => {$(
        impl ArrayElement for $t {
            const TYPE: ValueType = ValueType::$v;
            fn from_le_slice(b: &[u8]) -> Self {
                <$t>::from_le_bytes(b.try_into().expect("chunk of the element size"))
            }
        }
    )*};
}
array_element!(u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, f32 => F32,
    u64 => U64, i64 => I64, f64 => F64);

/// An owned metadata value, as given to the writer.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    /// See [`ValueType::U8`].
    U8(u8),
    /// See [`ValueType::I8`].
    I8(i8),
    /// See [`ValueType::U16`].
    U16(u16),
    /// See [`ValueType::I16`].
    I16(i16),
    /// See [`ValueType::U32`].
    U32(u32),
    /// See [`ValueType::I32`].
    I32(i32),
    /// See [`ValueType::F32`].
    F32(f32),
    /// See [`ValueType::Bool`].
    Bool(bool),
    /// See [`ValueType::String`].
    String(String),
    /// See [`ValueType::Array`].
    Array(MetaArray),
    /// See [`ValueType::U64`].
    U64(u64),
    /// See [`ValueType::I64`].
    I64(i64),
    /// See [`ValueType::F64`].
    F64(f64),
}

/// An owned, homogeneous metadata array.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaArray {
    /// An array of u8.
    U8(Vec<u8>),
    /// An array of i8.
    I8(Vec<i8>),
    /// An array of u16.
    U16(Vec<u16>),
    /// An array of i16.
    I16(Vec<i16>),
    /// An array of u32.
    U32(Vec<u32>),
    /// An array of i32.
    I32(Vec<i32>),
    /// An array of f32.
    F32(Vec<f32>),
    /// An array of bools.
    Bool(Vec<bool>),
    /// An array of strings.
    String(Vec<String>),
    /// An array of u64.
    U64(Vec<u64>),
    /// An array of i64.
    I64(Vec<i64>),
    /// An array of f64.
    F64(Vec<f64>),
}

impl MetaValue {
    /// The type of this value.
    pub fn value_type(&self) -> ValueType {
        match self {
            MetaValue::U8(_) => ValueType::U8,
            MetaValue::I8(_) => ValueType::I8,
            MetaValue::U16(_) => ValueType::U16,
            MetaValue::I16(_) => ValueType::I16,
            MetaValue::U32(_) => ValueType::U32,
            MetaValue::I32(_) => ValueType::I32,
            MetaValue::F32(_) => ValueType::F32,
            MetaValue::Bool(_) => ValueType::Bool,
            MetaValue::String(_) => ValueType::String,
            MetaValue::Array(_) => ValueType::Array,
            MetaValue::U64(_) => ValueType::U64,
            MetaValue::I64(_) => ValueType::I64,
            MetaValue::F64(_) => ValueType::F64,
        }
    }
}

impl MetaArray {
    /// The type of every element.
    pub fn elem_type(&self) -> ValueType {
        match self {
            MetaArray::U8(_) => ValueType::U8,
            MetaArray::I8(_) => ValueType::I8,
            MetaArray::U16(_) => ValueType::U16,
            MetaArray::I16(_) => ValueType::I16,
            MetaArray::U32(_) => ValueType::U32,
            MetaArray::I32(_) => ValueType::I32,
            MetaArray::F32(_) => ValueType::F32,
            MetaArray::Bool(_) => ValueType::Bool,
            MetaArray::String(_) => ValueType::String,
            MetaArray::U64(_) => ValueType::U64,
            MetaArray::I64(_) => ValueType::I64,
            MetaArray::F64(_) => ValueType::F64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            MetaArray::U8(v) => v.len(),
            MetaArray::I8(v) => v.len(),
            MetaArray::U16(v) => v.len(),
            MetaArray::I16(v) => v.len(),
            MetaArray::U32(v) => v.len(),
            MetaArray::I32(v) => v.len(),
            MetaArray::F32(v) => v.len(),
            MetaArray::Bool(v) => v.len(),
            MetaArray::String(v) => v.len(),
            MetaArray::U64(v) => v.len(),
            MetaArray::I64(v) => v.len(),
            MetaArray::F64(v) => v.len(),
        }
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

macro_rules! meta_from {
    ($($t:ty => $v:ident),*) => {$(
        impl From<$t> for MetaValue {
            fn from(v: $t) -> Self { MetaValue::$v(v) }
        }
        impl From<Vec<$t>> for MetaValue {
            fn from(v: Vec<$t>) -> Self { MetaValue::Array(MetaArray::$v(v)) }
        }
    )*};
}
meta_from!(u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, f32 => F32,
    bool => Bool, String => String, u64 => U64, i64 => I64, f64 => F64);

impl From<&str> for MetaValue {
    fn from(v: &str) -> Self {
        MetaValue::String(v.to_owned())
    }
}

impl From<MetaArray> for MetaValue {
    fn from(v: MetaArray) -> Self {
        MetaValue::Array(v)
    }
}
