// Binary Codable format used for every payload that crosses MPI.
//
// Wire format (all integers little-endian, "varint" = unsigned LEB128):
//   value  := header payload
//   header := varint (payloadLength << 3 | tag)   — or, for nil, varint (someDepth << 3 | 0)
//             Containers reserve a 5-byte padded varint and patch it when they close, so nothing
//             is ever moved; leaf values write the minimal varint directly.
//   tag 0 nil       no payload; someDepth counts `.some` wrappers around it so Int?? round-trips
//   tag 1 integer   1/2/4/8 bytes;  tag 2 float: 4/8 bytes;  tag 3 bool: 1 byte;  tag 4 string: UTF-8
//   tag 5 keyed     entries: key value;  key := varint(len << 1 | 1) utf8  |  0x00 varint(zigzag(intValue))
//   tag 6 unkeyed   u32 count, then `count` values
//   tag 7 raw array element-code byte, then the elements' little-endian memory (memcpy fast path for
//                   [UInt8], Data, [Double], [Int] ...); an unkeyed decoder can also iterate it.
// A `.some(x)` is encoded exactly like `x`, and a single-value container is transparent (its payload is
// the payload of what it holds), so wrappers, raw-value enums and optionals cost nothing extra.
// Keyed values are length-prefixed so the decoder can find keys in any order.

// Foundation only provides Data/Date for their fast paths; the hot path is pure stdlib.
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Encodes any `Encodable` value into the compact binary format described at the top of this file.
///
/// Nesting limit: encoding recurses once per nested value whose own `encode(to:)` runs (structs,
/// classes, enums, arrays and dictionaries of such values; leaf numbers, strings and raw arrays
/// do not count, nor do `Optional` wrappers). At most `maxDepth` (128) such values may be nested,
/// the top-level value included; deeper values throw `CodecError` with code `.nestingTooDeep`
/// instead of overflowing the stack. A list `Node { var next: Node? }` of classes uses one level
/// per node; a struct list through a box class, `Node { var next: Box<Node>? }`, uses two.
/// `BinaryDecoder` enforces the same limit, so whatever encodes also decodes.
package struct BinaryEncoder {
    /// Most nested values (top level included) an encode may hold; see the type's documentation.
    ///
    /// Chosen from measured stack use with synthesised `Codable` types defined in another module:
    /// one level costs up to about 2.8 KiB of stack in a debug build and 1.4 KiB optimised
    /// (decoding is the heavier side). 128 levels therefore need at most about 360 KiB (debug) or
    /// 180 KiB (optimised): inside a 512 KiB secondary-thread stack with room for the caller's
    /// frames and heavier user `encode(to:)` bodies, and far inside an 8 MiB main-thread stack.
    /// A test round-trips values at the limit on a 512 KiB thread.
    package static let maxDepth = 128

    /// Appends the binary encoding of `value` to `buffer`. On failure `buffer` is left unchanged.
    package static func encode<T: Encodable>(_ value: T, into buffer: inout [UInt8]) throws(CodecError) {
        // Leaf types and trivial arrays need no encoder object at all.
        if CodecWire.fastEncode(value, &buffer, header: true) != nil { return }
        let e = try encodeGeneric(value, maxDepth: maxDepth)
        buffer.putRaw(e.buf.bytes)
        CodecCache.recycle(e)
    }

    /// Returns the binary encoding of `value`.
    package static func encode<T: Encodable>(_ value: T) throws(CodecError) -> [UInt8] {
        try encode(value, maxDepth: maxDepth)
    }

    /// Returns the binary encoding of `value`, allowing `maxDepth` nested values instead of the
    /// default (tests use it to build inputs the decoder must refuse).
    static func encode<T: Encodable>(_ value: T, maxDepth: Int) throws(CodecError) -> [UInt8] {
        var out: [UInt8] = []
        if CodecWire.fastEncode(value, &out, header: true) != nil { return out }
        let e = try encodeGeneric(value, maxDepth: maxDepth)
        let src = e.buf.bytes
        // Exact-size result in one allocation and one copy.
        out = [UInt8](unsafeUninitializedCapacity: src.count) { dst, n in
            if src.count > 0 {
                UnsafeMutableRawPointer(dst.baseAddress!).copyMemory(from: src.baseAddress!, byteCount: src.count)
            }
            n = src.count
        }
        CodecCache.recycle(e)
        return out
    }

    /// Runs the general encoder; the result is in the returned object's buffer.
    private static func encodeGeneric<T: Encodable>(_ value: T, maxDepth: Int) throws(CodecError) -> BinaryEncoderImpl {
        let e = CodecCache.encoder(topType: T.self)
        e.maxDepth = maxDepth
        do {
            try e.writeSlot(value, path: -1, checkedFast: true)
            if let d = e.deferred { throw d }
        } catch {
            // Not recycled: a failed encode may leave frames half-open.
            throw e.convert(error)
        }
        return e
    }
}

// MARK: - Shared wire helpers

/// Wire-format constants and primitive readers/writers shared by the encoder and decoder.
enum CodecWire {
    static let tagNil: UInt8 = 0
    static let tagInt: UInt8 = 1
    static let tagFloat: UInt8 = 2
    static let tagBool: UInt8 = 3
    static let tagString: UInt8 = 4
    static let tagKeyed: UInt8 = 5
    static let tagUnkeyed: UInt8 = 6
    static let tagRaw: UInt8 = 7
    static let tagUnset: UInt8 = 0xFF
    /// Bytes reserved for a container header (35 bits: 32 of length, 3 of tag).
    static let containerHeaderSize = 5
    static let maxContainerLength = (1 << 32) - 1

    /// Never dereferenced; lets empty inputs use a non-optional base pointer.
    static var emptyBase: UnsafeRawPointer { UnsafeRawPointer(bitPattern: 0x10)! }

    static func tagName(_ tag: UInt8) -> String {
        switch tag {
        case tagNil: return "nil"
        case tagInt: return "integer"
        case tagFloat: return "floating-point number"
        case tagBool: return "Bool"
        case tagString: return "string"
        case tagKeyed: return "keyed container"
        case tagUnkeyed: return "unkeyed container"
        case tagRaw: return "array of fixed-width numbers"
        default: return "tag \(tag)"
        }
    }

    @inline(__always) static func zigzag(_ v: Int) -> UInt64 {
        UInt64(bitPattern: Int64((v << 1) ^ (v >> (Int.bitWidth - 1))))
    }
    @inline(__always) static func unzigzag(_ v: UInt64) -> Int {
        Int(truncatingIfNeeded: Int64(bitPattern: (v >> 1) ^ (0 &- (v & 1))))
    }

    enum VarintResult {
        case ok(UInt64)
        case truncated
        case overflow
    }

    @inline(__always)
    static func readVarint(_ base: UnsafeRawPointer, _ pos: inout Int, _ limit: Int) -> VarintResult {
        guard pos < limit else { return .truncated }
        let b0 = base.load(fromByteOffset: pos, as: UInt8.self)
        if b0 < 0x80 {
            pos += 1
            return .ok(UInt64(b0))
        }
        return readVarintSlow(base, &pos, limit)
    }

    static func readVarintSlow(_ base: UnsafeRawPointer, _ pos: inout Int, _ limit: Int) -> VarintResult {
        var result: UInt64 = 0
        var shift: UInt64 = 0
        var p = pos
        while true {
            guard p < limit else { return .truncated }
            let b = base.load(fromByteOffset: p, as: UInt8.self)
            p += 1
            if shift == 63 && b > 1 { return .overflow }
            result |= UInt64(b & 0x7F) << shift
            if b < 0x80 {
                pos = p
                return .ok(result)
            }
            shift += 7
            if shift > 63 { return .overflow }
        }
    }

    /// Validating UTF-8 decode; nil for malformed input. ASCII (the common case for keys and
    /// identifiers) skips the generic validator, which is not specialised and costs metadata lookups.
    @inline(__always)
    static func string(_ p: UnsafeRawPointer, _ n: Int) -> String? {
        if n == 0 { return "" }
        let u = UnsafeBufferPointer(start: p.assumingMemoryBound(to: UInt8.self), count: n)
        if isASCII(p, n) { return String(decoding: u, as: UTF8.self) }
        return String(validating: u, as: UTF8.self)
    }

    @inline(__always)
    static func isASCII(_ p: UnsafeRawPointer, _ n: Int) -> Bool {
        var i = 0
        var acc: UInt64 = 0
        while i + 8 <= n {
            acc |= p.loadUnaligned(fromByteOffset: i, as: UInt64.self)
            i += 8
        }
        while i < n {
            acc |= UInt64(p.load(fromByteOffset: i, as: UInt8.self))
            i += 1
        }
        return acc & 0x8080_8080_8080_8080 == 0
    }

    /// A parsed key: either an integer or a string stored at `start..<start+length`.
    struct KeyRef {
        var isInt: Bool
        var int: Int
        var start: Int
        var length: Int
    }

    @inline(__always)
    static func parseKey(_ base: UnsafeRawPointer, _ pos: inout Int, _ limit: Int) -> KeyRef? {
        guard case .ok(let h) = readVarint(base, &pos, limit) else { return nil }
        if h == 0 {
            guard case .ok(let z) = readVarint(base, &pos, limit) else { return nil }
            return KeyRef(isInt: true, int: unzigzag(z), start: 0, length: 0)
        }
        guard h & 1 == 1 else { return nil }
        let n = h >> 1
        guard n <= UInt64(limit - pos) else { return nil }
        let k = KeyRef(isInt: false, int: 0, start: pos, length: Int(n))
        pos += Int(n)
        return k
    }

    enum KeyValue {
        case int(Int)
        case string(String)
    }

    static func key(at pos: Int, in bytes: UnsafeRawBufferPointer) -> KeyValue? {
        guard let base = bytes.baseAddress else { return nil }
        var p = pos
        guard let k = parseKey(base, &p, bytes.count) else { return nil }
        if k.isInt { return .int(k.int) }
        return .string(string(base + k.start, k.length) ?? "?")
    }

    static func keyDescription(at pos: Int, in bytes: UnsafeRawBufferPointer) -> String {
        switch key(at: pos, in: bytes) {
        case .int(let i): return String(i)
        case .string(let s): return s
        case nil: return "?"
        }
    }

    // MARK: leaf writers

    @inline(__always)
    static func putInt<I: FixedWidthInteger, S: CodecByteSink>(_ v: I, _ b: inout S, _ header: Bool) -> UInt8 {
        if header {
            if MemoryLayout<I>.size < 16 {
                b.putByte(UInt8(MemoryLayout<I>.size << 3) | tagInt)
            } else {
                b.putVarint(UInt64(MemoryLayout<I>.size << 3) | UInt64(tagInt))
            }  // Int128: 2-byte header
        }
        b.putLE(v)
        return tagInt
    }

    @inline(__always)
    static func putString<S: CodecByteSink>(_ v: String, _ b: inout S, _ header: Bool) -> UInt8 {
        var s = v
        s.withUTF8 { u in
            if header { b.putVarint(UInt64(u.count) << 3 | UInt64(tagString)) }
            b.putRaw(UnsafeRawBufferPointer(u))
        }
        return tagString
    }

    @inline(__always)
    static func putBool<S: CodecByteSink>(_ v: Bool, _ b: inout S, _ header: Bool) -> UInt8 {
        if header { b.putByte(1 << 3 | tagBool) }
        b.putByte(v ? 1 : 0)
        return tagBool
    }

    @inline(__always)
    static func putDouble<S: CodecByteSink>(_ v: Double, _ b: inout S, _ header: Bool) -> UInt8 {
        if header { b.putByte(8 << 3 | tagFloat) }
        b.putLE(v.bitPattern)
        return tagFloat
    }

    @inline(__always)
    static func putFloat<S: CodecByteSink>(_ v: Float, _ b: inout S, _ header: Bool) -> UInt8 {
        if header { b.putByte(4 << 3 | tagFloat) }
        b.putLE(v.bitPattern)
        return tagFloat
    }

    static func putRawBytes<S: CodecByteSink>(
        _ raw: UnsafeRawBufferPointer,
        code: UInt8,
        _ b: inout S,
        _ header: Bool
    ) -> UInt8 {
        if header { b.putVarint(UInt64(raw.count + 1) << 3 | UInt64(tagRaw)) }
        b.putByte(code)
        b.putRaw(raw)
        return tagRaw
    }

    static func putRaw<E: CodecRawElement, S: CodecByteSink>(_ v: [E], _ b: inout S, _ header: Bool) -> UInt8 {
        #if _endian(little)
        return v.withUnsafeBytes { putRawBytes($0, code: E.codecRawCode, &b, header) }
        #else
        let le = v.map { $0.codecLittleEndian }
        return le.withUnsafeBytes { putRawBytes($0, code: E.codecRawCode, &b, header) }
        #endif
    }

    /// Writes `v` if its type has a dedicated fast path and returns its tag; returns nil otherwise
    /// (nothing written). Metatype comparisons are pointer compares, much cheaper than `as?` casts.
    @inline(__always)
    static func fastEncode<T, S: CodecByteSink>(_ v: T, _ b: inout S, header: Bool) -> UInt8? {
        if T.self == Int.self { return putInt(unsafeBitCast(v, to: Int.self), &b, header) }
        if T.self == String.self { return putString(unsafeBitCast(v, to: String.self), &b, header) }
        if T.self == Double.self { return putDouble(unsafeBitCast(v, to: Double.self), &b, header) }
        if T.self == Bool.self { return putBool(unsafeBitCast(v, to: Bool.self), &b, header) }
        if T.self == [UInt8].self { return putRaw(unsafeBitCast(v, to: [UInt8].self), &b, header) }
        if T.self == Data.self {
            return unsafeBitCast(v, to: Data.self).withUnsafeBytes {
                putRawBytes($0, code: UInt8.codecRawCode, &b, header)
            }
        }
        if T.self == [Double].self { return putRaw(unsafeBitCast(v, to: [Double].self), &b, header) }
        if T.self == [Int].self { return putRaw(unsafeBitCast(v, to: [Int].self), &b, header) }
        if T.self == [Float].self { return putRaw(unsafeBitCast(v, to: [Float].self), &b, header) }
        if T.self == [Int32].self { return putRaw(unsafeBitCast(v, to: [Int32].self), &b, header) }
        if T.self == [Int64].self { return putRaw(unsafeBitCast(v, to: [Int64].self), &b, header) }
        if T.self == Date.self {
            return putDouble(unsafeBitCast(v, to: Date.self).timeIntervalSinceReferenceDate, &b, header)
        }
        return fastEncodeRare(v, &b, header: header)
    }

    static func fastEncodeRare<T, S: CodecByteSink>(_ v: T, _ b: inout S, header: Bool) -> UInt8? {
        if T.self == Float.self { return putFloat(unsafeBitCast(v, to: Float.self), &b, header) }
        if T.self == Int64.self { return putInt(unsafeBitCast(v, to: Int64.self), &b, header) }
        if T.self == Int32.self { return putInt(unsafeBitCast(v, to: Int32.self), &b, header) }
        if T.self == UInt8.self { return putInt(unsafeBitCast(v, to: UInt8.self), &b, header) }
        if T.self == UInt64.self { return putInt(unsafeBitCast(v, to: UInt64.self), &b, header) }
        if T.self == UInt32.self { return putInt(unsafeBitCast(v, to: UInt32.self), &b, header) }
        if T.self == UInt.self { return putInt(unsafeBitCast(v, to: UInt.self), &b, header) }
        if T.self == Int16.self { return putInt(unsafeBitCast(v, to: Int16.self), &b, header) }
        if T.self == UInt16.self { return putInt(unsafeBitCast(v, to: UInt16.self), &b, header) }
        if T.self == Int8.self { return putInt(unsafeBitCast(v, to: Int8.self), &b, header) }
        if T.self == [UInt32].self { return putRaw(unsafeBitCast(v, to: [UInt32].self), &b, header) }
        if T.self == [UInt64].self { return putRaw(unsafeBitCast(v, to: [UInt64].self), &b, header) }
        if T.self == [UInt].self { return putRaw(unsafeBitCast(v, to: [UInt].self), &b, header) }
        if T.self == [Int16].self { return putRaw(unsafeBitCast(v, to: [Int16].self), &b, header) }
        if T.self == [UInt16].self { return putRaw(unsafeBitCast(v, to: [UInt16].self), &b, header) }
        if T.self == [Int8].self { return putRaw(unsafeBitCast(v, to: [Int8].self), &b, header) }
        return nil
    }
}

/// True when `t` is `Optional<Something>`: reads the metadata kind word (0x202 = Optional in the
/// stable Swift ABI), which is far cheaper than a protocol-conformance cast on every value.
@inline(__always)
func codecIsOptionalType(_ t: any Any.Type) -> Bool {
    unsafeBitCast(t, to: UnsafeRawPointer.self).load(as: UInt.self) == 0x202
}

/// Fixed-width numbers that arrays may carry as raw little-endian memory.
/// Codes: low nibble = byte width, high nibble 0 unsigned, 1 signed, 2 floating point.
protocol CodecRawElement {
    static var codecRawCode: UInt8 { get }
    var codecLittleEndian: Self { get }
}

extension CodecRawElement where Self: FixedWidthInteger {
    var codecLittleEndian: Self { littleEndian }
}

extension UInt8: CodecRawElement { static var codecRawCode: UInt8 { 0x01 } }
extension Int8: CodecRawElement { static var codecRawCode: UInt8 { 0x11 } }
extension UInt16: CodecRawElement { static var codecRawCode: UInt8 { 0x02 } }
extension Int16: CodecRawElement { static var codecRawCode: UInt8 { 0x12 } }
extension UInt32: CodecRawElement { static var codecRawCode: UInt8 { 0x04 } }
extension Int32: CodecRawElement { static var codecRawCode: UInt8 { 0x14 } }
extension UInt64: CodecRawElement { static var codecRawCode: UInt8 { 0x08 } }
extension Int64: CodecRawElement { static var codecRawCode: UInt8 { 0x18 } }
// Int/UInt share codes with their same-width fixed types so [Int] and [Int64] interoperate.
extension UInt: CodecRawElement { static var codecRawCode: UInt8 { UInt8(MemoryLayout<UInt>.size) } }
extension Int: CodecRawElement { static var codecRawCode: UInt8 { 0x10 | UInt8(MemoryLayout<Int>.size) } }
extension Float: CodecRawElement {
    static var codecRawCode: UInt8 { 0x24 }
    var codecLittleEndian: Float { Float(bitPattern: bitPattern.littleEndian) }
}
extension Double: CodecRawElement {
    static var codecRawCode: UInt8 { 0x28 }
    var codecLittleEndian: Double { Double(bitPattern: bitPattern.littleEndian) }
}

// MARK: - Encoder implementation

/// Lets the encoder unwrap an `Optional` of any wrapped type without knowing it statically.
protocol CodecOptionalEncodable {
    func encodeWrapped(_ e: BinaryEncoderImpl, inFrame: Bool, someDepth: Int, path: Int) throws
}

extension Optional: CodecOptionalEncodable where Wrapped: Encodable {
    func encodeWrapped(_ e: BinaryEncoderImpl, inFrame: Bool, someDepth: Int, path: Int) throws {
        switch self {
        case .none:
            if inFrame {
                e.frames[e.frames.count - 1].nilDepth = someDepth
            } else {
                e.buf.putVarint(UInt64(someDepth) << 3 | UInt64(CodecWire.tagNil))
            }
        case .some(let w):
            if inFrame {
                try e.writeInFrame(w, someDepth: someDepth + 1)
            } else {
                try e.writeSlot(w, path: path, someDepth: someDepth + 1)
            }
        }
    }
}

/// The `Encoder` handed to `encode(to:)`. Values are written straight into one buffer; each
/// non-leaf value opens a frame whose header is patched when it closes. A frame left open by a
/// nested container is closed as soon as its parent writes again, which keeps output sequential.
final class BinaryEncoderImpl: Encoder {
    struct Frame {
        var id: Int
        var headerPos: Int
        var tag: UInt8
        var nilDepth: Int
        var countPos: Int
        var count: Int
        /// Key offset (>= 0), or -(index + 2) for array elements, or -1 for none; an Int rather
        /// than a CodecPathItem keeps Frame trivially copyable.
        var path: Int
        /// `.some` wrappers around this value; a nil written inside it must count them too,
        /// so that `Optional(wrapperThatEncodesNil)` stays distinct from `nil`.
        var someDepth: Int
    }

    // Unchecked exclusivity: these are only touched from the encoding thread, and dynamic checks
    // on every append would cost more than the append itself.
    @exclusivity(unchecked) var buf = CodecRawSink()
    @exclusivity(unchecked) var frames: [Frame] = []
    @exclusivity(unchecked) var nextID = 0
    /// Frame of the value whose `encode(to:)` is currently running.
    @exclusivity(unchecked) var current = -1
    /// Misuse detected in a non-throwing API (e.g. `nestedContainer`), reported at the end.
    var deferred: CodecError?
    @exclusivity(unchecked) var topType: any Any.Type
    /// Values whose `encode(to:)` is running (the recursion depth) and the most allowed.
    @exclusivity(unchecked) var depth = 0
    @exclusivity(unchecked) var maxDepth = BinaryEncoder.maxDepth

    init(topType: any Any.Type) {
        self.topType = topType
    }

    func reset(topType: any Any.Type) {
        self.topType = topType
        depth = 0
        buf.count = 0
        if !frames.isEmpty { frames.removeAll(keepingCapacity: true) }
        current = -1
        deferred = nil
    }

    deinit { buf.free() }

    var codingPath: [any CodingKey] { pathKeys(frames.map { BinaryEncoderImpl.item($0.path) }) }

    static func code(_ item: CodecPathItem) -> Int {
        switch item {
        case .bufferKey(let p): return p
        case .index(let i): return -(i + 2)
        default: return -1
        }
    }

    @inline(__always) static func indexPath(_ i: Int) -> Int { -(i + 2) }

    static func item(_ code: Int) -> CodecPathItem {
        code >= 0 ? .bufferKey(code) : code == -1 ? .none : .index(-code - 2)
    }
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func pathKeys(_ items: [CodecPathItem]) -> [any CodingKey] {
        CodecPathItem.keys(items, bytes: buf.bytes)
    }

    func pathKeys(upTo id: Int) -> [any CodingKey] {
        var items: [CodecPathItem] = []
        for f in frames {
            items.append(BinaryEncoderImpl.item(f.path))
            if f.id == id { break }
        }
        return pathKeys(items)
    }

    func failure(
        _ reason: String,
        extra: CodecPathItem = .none,
        code: CodecError.Code = .encodingFailed,
        valueType: (any Any.Type)? = nil
    ) -> CodecError {
        var items = frames.map { BinaryEncoderImpl.item($0.path) }
        items.append(extra)
        let path = CodecPathItem.render(items, bytes: buf.bytes)
        let top = String(reflecting: topType)
        return CodecError(
            code,
            typeName: top,
            valueTypeName: valueType.map { String(reflecting: $0) } ?? top,
            codingPath: path,
            reason: reason,
            encoding: true
        )
    }

    func convert(_ error: any Error) -> CodecError {
        if let e = error as? CodecError { return e }
        return failure(String(describing: error))
    }

    /// The error for a value of type `type` that would nest deeper than `maxDepth`; remembered so
    /// the encode fails even if user code swallows it. The path is elided in the middle.
    @inline(never)
    func tooDeep(_ type: any Any.Type) -> CodecError {
        let top = String(reflecting: topType)
        let e = CodecError(
            .nestingTooDeep,
            typeName: top,
            valueTypeName: String(reflecting: type),
            codingPath: CodecPathItem.renderElided(frames.map { BinaryEncoderImpl.item($0.path) }, bytes: buf.bytes),
            reason: "values nested deeper than the maximum depth of \(maxDepth) (BinaryEncoder.maxDepth) "
                + "while encoding \(top)",
            encoding: true
        )
        if deferred == nil { deferred = e }
        return e
    }

    // MARK: frames

    func pushFrame(path: Int, someDepth: Int = 0) -> Int {
        let id = nextID
        nextID &+= 1
        let pos = buf.count
        buf.putLE(UInt32(0))
        buf.putByte(0)
        frames.append(
            Frame(
                id: id,
                headerPos: pos,
                tag: CodecWire.tagUnset,
                nilDepth: -1,
                countPos: -1,
                count: 0,
                path: path,
                someDepth: someDepth
            )
        )
        return id
    }

    /// Makes frame `id` the innermost open frame (closing finished nested ones) before writing to it.
    @inline(__always)
    func prepare(_ id: Int) throws {
        let n = frames.count
        if n > 0 && frames[n - 1].id == id { return }
        try prepareSlow(id)
    }

    func prepareSlow(_ id: Int) throws {
        guard let i = frames.lastIndex(where: { $0.id == id }) else {
            throw failure("container used after the value it belongs to was finished")
        }
        while frames.count > i + 1 { try closeTop() }
    }

    func closeTop() throws {
        let f = frames[frames.count - 1]
        let payloadStart = f.headerPos + CodecWire.containerHeaderSize
        let len = buf.count - payloadStart
        let header: UInt64
        if f.nilDepth >= 0 {
            guard len == 0 else { throw failure("value encoded both nil and a payload") }
            header = UInt64(f.nilDepth) << 3 | UInt64(CodecWire.tagNil)
        } else {
            guard len <= CodecWire.maxContainerLength else {
                throw failure("container payload of \(len) bytes exceeds the 4 GiB limit")
            }
            let tag = f.tag == CodecWire.tagUnset ? CodecWire.tagKeyed : f.tag
            if tag == CodecWire.tagUnkeyed {
                let c = UInt32(truncatingIfNeeded: f.count)
                buf.storeU32(at: f.countPos, c)
            }
            header = UInt64(len) << 3 | UInt64(tag)
        }
        buf.storePadded5(at: f.headerPos, header)
        frames.removeLast()
    }

    func close(through id: Int) throws {
        while let last = frames.last {
            try closeTop()
            if last.id == id { return }
        }
        throw failure("internal frame stack mismatch")
    }

    /// Records which container kind frame `id` holds; mixing kinds is a misuse reported later.
    func bind(_ id: Int, tag: UInt8) {
        guard let i = frames.lastIndex(where: { $0.id == id }) else {
            if deferred == nil { deferred = failure("container requested after its value was finished") }
            return
        }
        let t = frames[i].tag
        if t == tag && frames[i].nilDepth < 0 { return }
        guard t == CodecWire.tagUnset && frames[i].nilDepth < 0 else {
            if deferred == nil {
                deferred = failure(
                    "requested a \(CodecWire.tagName(tag)) but the value already holds a \(CodecWire.tagName(t))"
                )
            }
            return
        }
        frames[i].tag = tag
        if tag == CodecWire.tagUnkeyed {
            frames[i].countPos = buf.count
            buf.putLE(UInt32(0))
        }
    }

    // MARK: values

    /// Writes one complete value (header + payload).
    func writeSlot<T: Encodable>(_ v: T, path: Int, someDepth: Int = 0, checkedFast: Bool = false) throws {
        if !checkedFast && CodecWire.fastEncode(v, &buf, header: true) != nil { return }
        if codecIsOptionalType(T.self) {
            try (v as! any CodecOptionalEncodable).encodeWrapped(self, inFrame: false, someDepth: someDepth, path: path)
            return
        }
        let id = pushFrame(path: path, someDepth: someDepth)
        try encodeValue(v, inFrame: id)
        try close(through: id)
    }

    /// Writes `v` as the payload of the innermost frame (single-value containers are transparent).
    func writeInFrame<T: Encodable>(_ v: T, someDepth: Int) throws {
        let i = frames.count - 1
        guard frames[i].tag == CodecWire.tagUnset && frames[i].nilDepth < 0 else {
            throw failure("single value container already holds a value", valueType: T.self)
        }
        if let tag = CodecWire.fastEncode(v, &buf, header: false) {
            frames[i].tag = tag
            return
        }
        if codecIsOptionalType(T.self) {
            try (v as! any CodecOptionalEncodable).encodeWrapped(self, inFrame: true, someDepth: someDepth, path: -1)
            return
        }
        try encodeValue(v, inFrame: frames[i].id)
    }

    /// Runs `v`'s own `encode(to:)` with frame `id` as the current one, then restores the previous frame.
    private func encodeValue<T: Encodable>(_ v: T, inFrame id: Int) throws {
        guard depth < maxDepth else { throw tooDeep(T.self) }
        depth += 1
        let saved = current
        current = id
        defer {
            current = saved
            depth -= 1
        }
        do {
            try v.encode(to: self)
        } catch {
            // Remembered so the whole encode fails even if user code swallows this error:
            // the buffer now holds a partial value.
            let e = error as? CodecError ?? failure(String(describing: error), valueType: T.self)
            if deferred == nil { deferred = e }
            throw e
        }
    }

    /// Writes a keyed-container key and returns its offset (used to render coding paths lazily).
    @inline(__always)
    func writeKey<K: CodingKey>(_ key: K) -> Int {
        let pos = buf.count
        if let i = key.intValue {
            buf.putByte(0)
            buf.putVarint(CodecWire.zigzag(i))
        } else {
            var s = key.stringValue
            s.withUTF8 { u in
                buf.putVarint(UInt64(u.count) << 1 | 1)
                buf.putRaw(UnsafeRawBufferPointer(u))
            }
        }
        return pos
    }

    func nestedFrame(tag: UInt8, path: Int) -> Int {
        let id = pushFrame(path: path)
        bind(id, tag: tag)
        return id
    }

    // MARK: Encoder

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        bind(current, tag: CodecWire.tagKeyed)
        return KeyedEncodingContainer(BinaryKeyedEncoding<Key>(e: self, id: current))
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        bind(current, tag: CodecWire.tagUnkeyed)
        return BinaryUnkeyedEncoding(e: self, id: current)
    }

    func singleValueContainer() -> any SingleValueEncodingContainer {
        BinarySingleValueEncoding(e: self, id: current)
    }

    func deferPrepare(_ id: Int) {
        do { try prepare(id) } catch {
            if deferred == nil { deferred = convert(error) }
        }
    }
}

/// Encoder bound to one frame, returned by `superEncoder()`; it stays valid while that frame is open.
struct BinarySubEncoder: Encoder {
    let e: BinaryEncoderImpl
    let id: Int
    var codingPath: [any CodingKey] { e.pathKeys(upTo: id) }
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        e.bind(id, tag: CodecWire.tagKeyed)
        return KeyedEncodingContainer(BinaryKeyedEncoding<Key>(e: e, id: id))
    }
    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        e.bind(id, tag: CodecWire.tagUnkeyed)
        return BinaryUnkeyedEncoding(e: e, id: id)
    }
    func singleValueContainer() -> any SingleValueEncodingContainer { BinarySingleValueEncoding(e: e, id: id) }
}

/// Keyed container: writes `key value` entries into its frame.
struct BinaryKeyedEncoding<Key: CodingKey>: KeyedEncodingContainerProtocol {
    let e: BinaryEncoderImpl
    let id: Int
    var codingPath: [any CodingKey] { e.pathKeys(upTo: id) }

    @inline(__always) private func start(_ key: Key) throws {
        try e.prepare(id)
        _ = e.writeKey(key)
    }

    mutating func encodeNil(forKey key: Key) throws {
        try start(key)
        e.buf.putByte(CodecWire.tagNil)
    }
    mutating func encode(_ v: Bool, forKey key: Key) throws {
        try start(key)
        _ = CodecWire.putBool(v, &e.buf, true)
    }
    mutating func encode(_ v: String, forKey key: Key) throws {
        try start(key)
        _ = CodecWire.putString(v, &e.buf, true)
    }
    mutating func encode(_ v: Double, forKey key: Key) throws {
        try start(key)
        _ = CodecWire.putDouble(v, &e.buf, true)
    }
    mutating func encode(_ v: Float, forKey key: Key) throws {
        try start(key)
        _ = CodecWire.putFloat(v, &e.buf, true)
    }
    mutating func encode(_ v: Int, forKey key: Key) throws {
        try start(key)
        _ = CodecWire.putInt(v, &e.buf, true)
    }
    mutating func encode(_ v: Int8, forKey key: Key) throws {
        try start(key)
        _ = CodecWire.putInt(v, &e.buf, true)
    }
    mutating func encode(_ v: Int16, forKey key: Key) throws {
        try start(key)
        _ = CodecWire.putInt(v, &e.buf, true)
    }
    mutating func encode(_ v: Int32, forKey key: Key) throws {
        try start(key)
        _ = CodecWire.putInt(v, &e.buf, true)
    }
    mutating func encode(_ v: Int64, forKey key: Key) throws {
        try start(key)
        _ = CodecWire.putInt(v, &e.buf, true)
    }
    mutating func encode(_ v: UInt, forKey key: Key) throws {
        try start(key)
        _ = CodecWire.putInt(v, &e.buf, true)
    }
    mutating func encode(_ v: UInt8, forKey key: Key) throws {
        try start(key)
        _ = CodecWire.putInt(v, &e.buf, true)
    }
    mutating func encode(_ v: UInt16, forKey key: Key) throws {
        try start(key)
        _ = CodecWire.putInt(v, &e.buf, true)
    }
    mutating func encode(_ v: UInt32, forKey key: Key) throws {
        try start(key)
        _ = CodecWire.putInt(v, &e.buf, true)
    }
    mutating func encode(_ v: UInt64, forKey key: Key) throws {
        try start(key)
        _ = CodecWire.putInt(v, &e.buf, true)
    }
    @available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
    mutating func encode(_ v: Int128, forKey key: Key) throws {
        try start(key)
        _ = CodecWire.putInt(v, &e.buf, true)
    }
    @available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
    mutating func encode(_ v: UInt128, forKey key: Key) throws {
        try start(key)
        _ = CodecWire.putInt(v, &e.buf, true)
    }

    mutating func encode<T: Encodable>(_ v: T, forKey key: Key) throws {
        try e.prepare(id)
        let kp = e.writeKey(key)
        try e.writeSlot(v, path: kp)
    }

    mutating func encodeIfPresent<T: Encodable>(_ v: T?, forKey key: Key) throws {
        guard let w = v else { return }
        try e.prepare(id)
        let kp = e.writeKey(key)
        // For an optional T, `.some(.none)` must stay distinguishable from an absent key, so the
        // outer Optional is encoded too; otherwise `.some(x)` is encoded exactly like `x`.
        if codecIsOptionalType(T.self) {
            try e.writeSlot(v, path: kp)
        } else {
            try e.writeSlot(w, path: kp)
        }
    }

    mutating func nestedContainer<NestedKey: CodingKey>(
        keyedBy keyType: NestedKey.Type,
        forKey key: Key
    ) -> KeyedEncodingContainer<NestedKey> {
        e.deferPrepare(id)
        let kp = e.writeKey(key)
        let nid = e.nestedFrame(tag: CodecWire.tagKeyed, path: kp)
        return KeyedEncodingContainer(BinaryKeyedEncoding<NestedKey>(e: e, id: nid))
    }

    mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
        e.deferPrepare(id)
        let kp = e.writeKey(key)
        let nid = e.nestedFrame(tag: CodecWire.tagUnkeyed, path: kp)
        return BinaryUnkeyedEncoding(e: e, id: nid)
    }

    mutating func superEncoder() -> any Encoder {
        e.deferPrepare(id)
        let kp = e.writeKey(CodecPathKey(stringValue: "super"))
        return BinarySubEncoder(e: e, id: e.pushFrame(path: kp))
    }

    mutating func superEncoder(forKey key: Key) -> any Encoder {
        e.deferPrepare(id)
        let kp = e.writeKey(key)
        return BinarySubEncoder(e: e, id: e.pushFrame(path: kp))
    }
}

/// Unkeyed container: writes values in order; the frame counts them for the u32 count.
struct BinaryUnkeyedEncoding: UnkeyedEncodingContainer {
    let e: BinaryEncoderImpl
    let id: Int
    var count = 0

    init(e: BinaryEncoderImpl, id: Int) {
        self.e = e
        self.id = id
    }

    var codingPath: [any CodingKey] { e.pathKeys(upTo: id) }

    /// Counts one more element in the frame (written into the u32 count when the frame closes).
    @inline(__always) private mutating func start() throws {
        try e.prepare(id)
        e.frames[e.frames.count - 1].count += 1
        count += 1
    }

    mutating func encodeNil() throws {
        try start()
        e.buf.putByte(CodecWire.tagNil)
    }
    mutating func encode(_ v: Bool) throws {
        try start()
        _ = CodecWire.putBool(v, &e.buf, true)
    }
    mutating func encode(_ v: String) throws {
        try start()
        _ = CodecWire.putString(v, &e.buf, true)
    }
    mutating func encode(_ v: Double) throws {
        try start()
        _ = CodecWire.putDouble(v, &e.buf, true)
    }
    mutating func encode(_ v: Float) throws {
        try start()
        _ = CodecWire.putFloat(v, &e.buf, true)
    }
    mutating func encode(_ v: Int) throws {
        try start()
        _ = CodecWire.putInt(v, &e.buf, true)
    }
    mutating func encode(_ v: Int8) throws {
        try start()
        _ = CodecWire.putInt(v, &e.buf, true)
    }
    mutating func encode(_ v: Int16) throws {
        try start()
        _ = CodecWire.putInt(v, &e.buf, true)
    }
    mutating func encode(_ v: Int32) throws {
        try start()
        _ = CodecWire.putInt(v, &e.buf, true)
    }
    mutating func encode(_ v: Int64) throws {
        try start()
        _ = CodecWire.putInt(v, &e.buf, true)
    }
    mutating func encode(_ v: UInt) throws {
        try start()
        _ = CodecWire.putInt(v, &e.buf, true)
    }
    mutating func encode(_ v: UInt8) throws {
        try start()
        _ = CodecWire.putInt(v, &e.buf, true)
    }
    mutating func encode(_ v: UInt16) throws {
        try start()
        _ = CodecWire.putInt(v, &e.buf, true)
    }
    mutating func encode(_ v: UInt32) throws {
        try start()
        _ = CodecWire.putInt(v, &e.buf, true)
    }
    mutating func encode(_ v: UInt64) throws {
        try start()
        _ = CodecWire.putInt(v, &e.buf, true)
    }
    @available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
    mutating func encode(_ v: Int128) throws {
        try start()
        _ = CodecWire.putInt(v, &e.buf, true)
    }
    @available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
    mutating func encode(_ v: UInt128) throws {
        try start()
        _ = CodecWire.putInt(v, &e.buf, true)
    }

    mutating func encode<T: Encodable>(_ v: T) throws {
        try start()
        try e.writeSlot(v, path: BinaryEncoderImpl.indexPath(count - 1))
    }

    mutating func nestedContainer<NestedKey: CodingKey>(
        keyedBy keyType: NestedKey.Type
    ) -> KeyedEncodingContainer<NestedKey> {
        do { try start() } catch { if e.deferred == nil { e.deferred = e.convert(error) } }
        let nid = e.nestedFrame(tag: CodecWire.tagKeyed, path: BinaryEncoderImpl.indexPath(count - 1))
        return KeyedEncodingContainer(BinaryKeyedEncoding<NestedKey>(e: e, id: nid))
    }

    mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
        do { try start() } catch { if e.deferred == nil { e.deferred = e.convert(error) } }
        let nid = e.nestedFrame(tag: CodecWire.tagUnkeyed, path: BinaryEncoderImpl.indexPath(count - 1))
        return BinaryUnkeyedEncoding(e: e, id: nid)
    }

    mutating func superEncoder() -> any Encoder {
        do { try start() } catch { if e.deferred == nil { e.deferred = e.convert(error) } }
        return BinarySubEncoder(e: e, id: e.pushFrame(path: BinaryEncoderImpl.indexPath(count - 1)))
    }
}

/// Single-value container: writes its value's payload straight into the enclosing frame.
struct BinarySingleValueEncoding: SingleValueEncodingContainer {
    let e: BinaryEncoderImpl
    let id: Int
    var codingPath: [any CodingKey] { e.pathKeys(upTo: id) }

    /// Returns the frame index after checking that it does not hold a value yet.
    @inline(__always) private func slot() throws -> Int {
        try e.prepare(id)
        let i = e.frames.count - 1
        guard e.frames[i].tag == CodecWire.tagUnset && e.frames[i].nilDepth < 0 else {
            throw e.failure("single value container already holds a value")
        }
        return i
    }

    mutating func encodeNil() throws {
        let i = try slot()
        e.frames[i].nilDepth = e.frames[i].someDepth
    }
    mutating func encode(_ v: Bool) throws {
        let i = try slot()
        e.frames[i].tag = CodecWire.putBool(v, &e.buf, false)
    }
    mutating func encode(_ v: String) throws {
        let i = try slot()
        e.frames[i].tag = CodecWire.putString(v, &e.buf, false)
    }
    mutating func encode(_ v: Double) throws {
        let i = try slot()
        e.frames[i].tag = CodecWire.putDouble(v, &e.buf, false)
    }
    mutating func encode(_ v: Float) throws {
        let i = try slot()
        e.frames[i].tag = CodecWire.putFloat(v, &e.buf, false)
    }
    mutating func encode(_ v: Int) throws {
        let i = try slot()
        e.frames[i].tag = CodecWire.putInt(v, &e.buf, false)
    }
    mutating func encode(_ v: Int8) throws {
        let i = try slot()
        e.frames[i].tag = CodecWire.putInt(v, &e.buf, false)
    }
    mutating func encode(_ v: Int16) throws {
        let i = try slot()
        e.frames[i].tag = CodecWire.putInt(v, &e.buf, false)
    }
    mutating func encode(_ v: Int32) throws {
        let i = try slot()
        e.frames[i].tag = CodecWire.putInt(v, &e.buf, false)
    }
    mutating func encode(_ v: Int64) throws {
        let i = try slot()
        e.frames[i].tag = CodecWire.putInt(v, &e.buf, false)
    }
    mutating func encode(_ v: UInt) throws {
        let i = try slot()
        e.frames[i].tag = CodecWire.putInt(v, &e.buf, false)
    }
    mutating func encode(_ v: UInt8) throws {
        let i = try slot()
        e.frames[i].tag = CodecWire.putInt(v, &e.buf, false)
    }
    mutating func encode(_ v: UInt16) throws {
        let i = try slot()
        e.frames[i].tag = CodecWire.putInt(v, &e.buf, false)
    }
    mutating func encode(_ v: UInt32) throws {
        let i = try slot()
        e.frames[i].tag = CodecWire.putInt(v, &e.buf, false)
    }
    mutating func encode(_ v: UInt64) throws {
        let i = try slot()
        e.frames[i].tag = CodecWire.putInt(v, &e.buf, false)
    }
    @available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
    mutating func encode(_ v: Int128) throws {
        let i = try slot()
        e.frames[i].tag = CodecWire.putInt(v, &e.buf, false)
    }
    @available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
    mutating func encode(_ v: UInt128) throws {
        let i = try slot()
        e.frames[i].tag = CodecWire.putInt(v, &e.buf, false)
    }

    mutating func encode<T: Encodable>(_ v: T) throws {
        try e.prepare(id)
        try e.writeInFrame(v, someDepth: e.frames[e.frames.count - 1].someDepth)
    }
}
