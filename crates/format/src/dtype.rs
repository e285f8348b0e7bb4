//! ONNX tensor element types (`TensorProto.DataType`) and their storage facts.

use serde::Serialize;

/// An ONNX element type this crate understands (values 1..=28 of
/// `TensorProto.DataType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(into = "&'static str")]
pub enum DataType {
    Float,
    Uint8,
    Int8,
    Uint16,
    Int16,
    Int32,
    Int64,
    String,
    Bool,
    Float16,
    Double,
    Uint32,
    Uint64,
    Complex64,
    Complex128,
    Bfloat16,
    Float8E4M3Fn,
    Float8E4M3Fnuz,
    Float8E5M2,
    Float8E5M2Fnuz,
    Uint4,
    Int4,
    Float4E2M1,
    Float8E8M0,
    Uint2,
    Int2,
    Float6E2M3,
    Float6E3M2,
}

/// Which typed `TensorProto` field carries a type's values when `raw_data` is not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypedField {
    /// `float_data` (field 4, packed fixed32).
    Float,
    /// `int32_data` (field 5, packed varint).
    Int32,
    /// `string_data` (field 6).
    String,
    /// `int64_data` (field 7, packed varint).
    Int64,
    /// `double_data` (field 10, packed fixed64).
    Double,
    /// `uint64_data` (field 11, packed varint).
    Uint64,
}

impl TypedField {
    /// The field number in `TensorProto`.
    pub fn number(self) -> u32 {
        match self {
            TypedField::Float => 4,
            TypedField::Int32 => 5,
            TypedField::String => 6,
            TypedField::Int64 => 7,
            TypedField::Double => 10,
            TypedField::Uint64 => 11,
        }
    }
    /// The field's name in the ONNX schema.
    pub fn name(self) -> &'static str {
        match self {
            TypedField::Float => "float_data",
            TypedField::Int32 => "int32_data",
            TypedField::String => "string_data",
            TypedField::Int64 => "int64_data",
            TypedField::Double => "double_data",
            TypedField::Uint64 => "uint64_data",
        }
    }
    /// Field number → typed field, for the data fields of `TensorProto`.
    pub fn from_number(n: u32) -> Option<TypedField> {
        Some(match n {
            4 => TypedField::Float,
            5 => TypedField::Int32,
            6 => TypedField::String,
            7 => TypedField::Int64,
            10 => TypedField::Double,
            11 => TypedField::Uint64,
            _ => return None,
        })
    }
    /// Whether values are varints (and so change encoded length when changed).
    pub fn is_varint(self) -> bool {
        matches!(self, TypedField::Int32 | TypedField::Int64 | TypedField::Uint64)
    }
}

impl DataType {
    /// Maps the `data_type` integer; `None` for 0 (UNDEFINED) and unknown values.
    pub fn from_i32(v: i32) -> Option<DataType> {
        use DataType::*;
        Some(match v {
            1 => Float,
            2 => Uint8,
            3 => Int8,
            4 => Uint16,
            5 => Int16,
            6 => Int32,
            7 => Int64,
            8 => String,
            9 => Bool,
            10 => Float16,
            11 => Double,
            12 => Uint32,
            13 => Uint64,
            14 => Complex64,
            15 => Complex128,
            16 => Bfloat16,
            17 => Float8E4M3Fn,
            18 => Float8E4M3Fnuz,
            19 => Float8E5M2,
            20 => Float8E5M2Fnuz,
            21 => Uint4,
            22 => Int4,
            23 => Float4E2M1,
            24 => Float8E8M0,
            25 => Uint2,
            26 => Int2,
            27 => Float6E2M3,
            28 => Float6E3M2,
            _ => return None,
        })
    }

    /// The `data_type` integer.
    pub fn to_i32(self) -> i32 {
        use DataType::*;
        match self {
            Float => 1,
            Uint8 => 2,
            Int8 => 3,
            Uint16 => 4,
            Int16 => 5,
            Int32 => 6,
            Int64 => 7,
            String => 8,
            Bool => 9,
            Float16 => 10,
            Double => 11,
            Uint32 => 12,
            Uint64 => 13,
            Complex64 => 14,
            Complex128 => 15,
            Bfloat16 => 16,
            Float8E4M3Fn => 17,
            Float8E4M3Fnuz => 18,
            Float8E5M2 => 19,
            Float8E5M2Fnuz => 20,
            Uint4 => 21,
            Int4 => 22,
            Float4E2M1 => 23,
            Float8E8M0 => 24,
            Uint2 => 25,
            Int2 => 26,
            Float6E2M3 => 27,
            Float6E3M2 => 28,
        }
    }

    /// The ONNX enum name (`FLOAT`, `FLOAT16`, ...).
    pub fn name(self) -> &'static str {
        use DataType::*;
        match self {
            Float => "FLOAT",
            Uint8 => "UINT8",
            Int8 => "INT8",
            Uint16 => "UINT16",
            Int16 => "INT16",
            Int32 => "INT32",
            Int64 => "INT64",
            String => "STRING",
            Bool => "BOOL",
            Float16 => "FLOAT16",
            Double => "DOUBLE",
            Uint32 => "UINT32",
            Uint64 => "UINT64",
            Complex64 => "COMPLEX64",
            Complex128 => "COMPLEX128",
            Bfloat16 => "BFLOAT16",
            Float8E4M3Fn => "FLOAT8E4M3FN",
            Float8E4M3Fnuz => "FLOAT8E4M3FNUZ",
            Float8E5M2 => "FLOAT8E5M2",
            Float8E5M2Fnuz => "FLOAT8E5M2FNUZ",
            Uint4 => "UINT4",
            Int4 => "INT4",
            Float4E2M1 => "FLOAT4E2M1",
            Float8E8M0 => "FLOAT8E8M0",
            Uint2 => "UINT2",
            Int2 => "INT2",
            Float6E2M3 => "FLOAT6E2M3",
            Float6E3M2 => "FLOAT6E3M2",
        }
    }

    /// Bits per element (0 for STRING, whose elements have no fixed size).
    pub fn bits(self) -> u64 {
        use DataType::*;
        match self {
            String => 0,
            Uint2 | Int2 => 2,
            Uint4 | Int4 | Float4E2M1 => 4,
            Float6E2M3 | Float6E3M2 => 6,
            Uint8 | Int8 | Bool | Float8E4M3Fn | Float8E4M3Fnuz | Float8E5M2 | Float8E5M2Fnuz | Float8E8M0 => 8,
            Uint16 | Int16 | Float16 | Bfloat16 => 16,
            Float | Int32 | Uint32 => 32,
            Int64 | Uint64 | Double | Complex64 => 64,
            Complex128 => 128,
        }
    }

    /// Byte length of `numel` elements in `raw_data` layout (sub-byte types are
    /// packed, the last byte padded). `None` on overflow; 0 for STRING.
    pub fn byte_len(self, numel: u64) -> Option<u64> {
        let bits = self.bits();
        if bits == 0 {
            return Some(0);
        }
        numel.checked_mul(bits).map(|b| b.div_ceil(8))
    }

    /// The typed field that carries this type when `raw_data` is not used.
    pub fn typed_field(self) -> TypedField {
        use DataType::*;
        match self {
            Float | Complex64 => TypedField::Float,
            Double | Complex128 => TypedField::Double,
            Int64 => TypedField::Int64,
            Uint32 | Uint64 => TypedField::Uint64,
            String => TypedField::String,
            _ => TypedField::Int32,
        }
    }

    /// Number of typed-field values that hold `numel` elements.
    pub fn typed_count(self, numel: u64) -> Option<u64> {
        use DataType::*;
        match self {
            Complex64 | Complex128 => numel.checked_mul(2),
            Uint4 | Int4 | Float4E2M1 => Some(numel.div_ceil(2)),
            Uint2 | Int2 => Some(numel.div_ceil(4)),
            _ => Some(numel),
        }
    }

    /// Bytes of `raw_data` layout that one varint value of the typed field stands for; 0
    /// for the 6-bit types, whose `int32_data` values (one element each) map to no whole bytes.
    pub fn bytes_per_typed_value(self) -> u64 {
        use DataType::*;
        match self {
            Uint4 | Int4 | Float4E2M1 | Uint2 | Int2 => 1,
            Float6E2M3 | Float6E3M2 => 0,
            Complex64 => 4,
            Complex128 => 8,
            _ => self.bits() / 8,
        }
    }

    /// Whether typed-field values of this type are sign-extended from their element width.
    pub fn is_signed_int(self) -> bool {
        matches!(self, DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64)
    }

    /// Whether this is a floating-point type with an exponent field.
    pub fn is_float(self) -> bool {
        use DataType::*;
        matches!(
            self,
            Float
                | Double
                | Float16
                | Bfloat16
                | Complex64
                | Complex128
                | Float8E4M3Fn
                | Float8E4M3Fnuz
                | Float8E5M2
                | Float8E5M2Fnuz
                | Float4E2M1
                | Float6E2M3
                | Float6E3M2
        )
    }
}

impl From<DataType> for &'static str {
    fn from(d: DataType) -> &'static str {
        d.name()
    }
}

impl std::fmt::Display for DataType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips() {
        for v in 1..=28 {
            let d = DataType::from_i32(v).unwrap();
            assert_eq!(d.to_i32(), v);
        }
        assert!(DataType::from_i32(0).is_none());
        assert!(DataType::from_i32(29).is_none());
        assert!(DataType::from_i32(-1).is_none());
    }

    #[test]
    fn sub_byte_types_pack() {
        assert_eq!(DataType::Int4.byte_len(3), Some(2));
        assert_eq!(DataType::Uint2.byte_len(5), Some(2));
        assert_eq!(DataType::Float6E2M3.byte_len(5), Some(4));
        assert_eq!(DataType::Float6E3M2.byte_len(4), Some(3));
        assert_eq!(DataType::Float.byte_len(u64::MAX), None);
    }
}
