// Little-endian byte writer/reader used for message framing and as the codec's primitive layer.
// Lengths are LEB128 varints; fixed-width values are little-endian. Reads are bounds-checked and
// throw CodecError instead of trapping.

/// Appends little-endian primitives, varints and length-prefixed blobs to a `[UInt8]`.
struct ByteWriter {
    /// The bytes written so far (callers may take it or write into it directly).
    var bytes: [UInt8]

    init(capacity: Int = 0) {
        bytes = []
        if capacity > 0 { bytes.reserveCapacity(capacity) }
    }

    init(bytes: [UInt8]) { self.bytes = bytes }

    var count: Int { bytes.count }

    /// Fixed-width little-endian integer.
    mutating func write<I: FixedWidthInteger>(_ value: I) { ByteWriter.appendLE(&bytes, value) }
    mutating func write(_ value: Double) { ByteWriter.appendLE(&bytes, value.bitPattern) }
    mutating func write(_ value: Float) { ByteWriter.appendLE(&bytes, value.bitPattern) }
    mutating func write(_ value: Bool) { bytes.append(value ? 1 : 0) }
    /// Unsigned LEB128 (1 byte below 128).
    mutating func writeVarint(_ value: UInt64) { ByteWriter.appendVarint(&bytes, value) }
    /// Raw bytes, no length prefix.
    mutating func writeRaw(_ raw: UnsafeRawBufferPointer) { ByteWriter.appendRaw(&bytes, raw) }
    mutating func writeRaw(_ raw: [UInt8]) { bytes.append(contentsOf: raw) }
    /// Varint length followed by the bytes.
    mutating func writeBytes(_ raw: UnsafeRawBufferPointer) {
        writeVarint(UInt64(raw.count))
        writeRaw(raw)
    }
    mutating func writeBytes(_ raw: [UInt8]) {
        writeVarint(UInt64(raw.count))
        bytes.append(contentsOf: raw)
    }
    /// Varint length followed by the UTF-8 bytes.
    mutating func writeString(_ string: String) {
        var s = string
        s.withUTF8 { u in
            ByteWriter.appendVarint(&bytes, UInt64(u.count))
            ByteWriter.appendRaw(&bytes, UnsafeRawBufferPointer(u))
        }
    }
    /// Overwrites a previously reserved fixed-width slot (e.g. a frame length) in place.
    mutating func patch<I: FixedWidthInteger>(_ value: I, at offset: Int) {
        precondition(offset >= 0 && offset + MemoryLayout<I>.size <= bytes.count, "patch out of range")
        bytes.withUnsafeMutableBytes { $0.storeBytes(of: value.littleEndian, toByteOffset: offset, as: I.self) }
    }

    // MARK: shared primitive appends (also used by the encoder on its own buffer)

    @inline(__always)
    static func appendLE<I: FixedWidthInteger>(_ bytes: inout [UInt8], _ value: I) {
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }

    @inline(__always)
    static func appendVarint(_ bytes: inout [UInt8], _ value: UInt64) {
        if value < 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: value))
            return
        }
        var v = value
        var tmp: (UInt64, UInt64) = (0, 0)  // 10 bytes max; stack scratch avoids per-byte appends
        let n = withUnsafeMutableBytes(of: &tmp) { t -> Int in
            var i = 0
            while v >= 0x80 {
                t[i] = UInt8(truncatingIfNeeded: v) | 0x80
                v >>= 7
                i += 1
            }
            t[i] = UInt8(truncatingIfNeeded: v)
            return i + 1
        }
        withUnsafeBytes(of: &tmp) { bytes.append(contentsOf: UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
    }

    @inline(__always)
    static func appendRaw(_ bytes: inout [UInt8], _ raw: UnsafeRawBufferPointer) {
        guard raw.count > 0 else { return }
        // Typed UnsafeBufferPointer makes Array take its memcpy path.
        bytes.append(
            contentsOf: UnsafeBufferPointer(
                start: raw.baseAddress!.assumingMemoryBound(to: UInt8.self),
                count: raw.count
            )
        )
    }
}

/// Reads what ByteWriter wrote, with bounds checks that throw `CodecError.Code.truncated`/`.corrupted`.
/// The caller keeps the underlying memory alive while the reader is used.
struct ByteReader {
    let base: UnsafeRawPointer
    /// Total number of readable bytes.
    let count: Int
    /// Position of the next read.
    var offset: Int = 0

    init(_ buffer: UnsafeRawBufferPointer) {
        // A dangling-but-never-dereferenced pointer for empty input keeps reads branch-free.
        base = buffer.baseAddress ?? CodecWire.emptyBase
        count = buffer.count
    }

    var remaining: Int { count - offset }
    var isAtEnd: Bool { offset >= count }

    @inline(__always)
    private func need(_ n: Int, _ what: @autoclosure () -> String) throws(CodecError) {
        if n > count - offset || n < 0 {
            throw CodecError(
                .truncated,
                typeName: what(),
                reason: "truncated input (needed \(n) bytes, \(count - offset) left)"
            )
        }
    }

    mutating func read<I: FixedWidthInteger>(_ type: I.Type = I.self) throws(CodecError) -> I {
        try need(MemoryLayout<I>.size, String(reflecting: I.self))
        let v = I(littleEndian: base.loadUnaligned(fromByteOffset: offset, as: I.self))
        offset += MemoryLayout<I>.size
        return v
    }
    mutating func readDouble() throws(CodecError) -> Double { Double(bitPattern: try read(UInt64.self)) }
    mutating func readFloat() throws(CodecError) -> Float { Float(bitPattern: try read(UInt32.self)) }
    mutating func readBool() throws(CodecError) -> Bool {
        let b = try read(UInt8.self)
        guard b <= 1 else {
            throw CodecError(.corrupted, typeName: "Swift.Bool", reason: "invalid Bool byte \(b)")
        }
        return b == 1
    }
    mutating func readVarint() throws(CodecError) -> UInt64 {
        var pos = offset
        switch CodecWire.readVarint(base, &pos, count) {
        case .ok(let v):
            offset = pos
            return v
        case .truncated:
            throw CodecError(
                .truncated,
                typeName: "varint",
                reason: "truncated input (needed \(count - offset + 1) bytes, \(count - offset) left)"
            )
        case .overflow:
            throw CodecError(.corrupted, typeName: "varint", reason: "varint longer than 64 bits")
        }
    }
    /// Varint length checked against the remaining bytes before anything is allocated.
    private mutating func readLength(_ what: String) throws(CodecError) -> Int {
        let n = try readVarint()
        guard n <= UInt64(count - offset) else {
            throw CodecError(
                .truncated,
                typeName: what,
                reason: "truncated input (needed \(n) bytes, \(count - offset) left)"
            )
        }
        return Int(n)
    }
    /// Raw bytes without prefix, as a view into the input (no copy).
    mutating func readRaw(count n: Int) throws(CodecError) -> UnsafeRawBufferPointer {
        try need(n, "bytes")
        let r = UnsafeRawBufferPointer(start: base + offset, count: n)
        offset += n
        return r
    }
    mutating func skip(_ n: Int) throws(CodecError) {
        try need(n, "bytes")
        offset += n
    }
    /// Length-prefixed bytes as a view into the input (no copy).
    mutating func readBytesView() throws(CodecError) -> UnsafeRawBufferPointer {
        let n = try readLength("bytes")
        let r = UnsafeRawBufferPointer(start: base + offset, count: n)
        offset += n
        return r
    }
    /// Length-prefixed bytes copied into a new array.
    mutating func readBytes() throws(CodecError) -> [UInt8] {
        let v = try readBytesView()
        return [UInt8](v)
    }
    /// Length-prefixed UTF-8 string; invalid UTF-8 throws.
    mutating func readString() throws(CodecError) -> String {
        let n = try readLength("Swift.String")
        guard let s = CodecWire.string(base + offset, n) else {
            throw CodecError(.corrupted, typeName: "Swift.String", reason: "invalid UTF-8")
        }
        offset += n
        return s
    }
}

/// Destination for the codec's primitive writers: the caller's `[UInt8]` (top-level fast paths)
/// or the encoder's own raw buffer.
protocol CodecByteSink {
    mutating func putByte(_ b: UInt8)
    mutating func putLE<I: FixedWidthInteger>(_ v: I)
    mutating func putRaw(_ raw: UnsafeRawBufferPointer)
    mutating func putVarint(_ value: UInt64)
}

extension Array: CodecByteSink where Element == UInt8 {
    @inline(__always) mutating func putByte(_ b: UInt8) { append(b) }
    @inline(__always) mutating func putLE<I: FixedWidthInteger>(_ v: I) { ByteWriter.appendLE(&self, v) }
    @inline(__always) mutating func putRaw(_ raw: UnsafeRawBufferPointer) { ByteWriter.appendRaw(&self, raw) }
    @inline(__always) mutating func putVarint(_ value: UInt64) { ByteWriter.appendVarint(&self, value) }
}

/// Manually managed growable buffer used while encoding: plain pointer stores are several times
/// cheaper than Array appends (no uniqueness checks), which dominates small-message cost.
/// Owned by BinaryEncoderImpl, which frees it.
struct CodecRawSink: CodecByteSink {
    var base: UnsafeMutableRawPointer?
    var count = 0
    var capacity = 0

    @inline(__always)
    mutating func reserve(_ n: Int) {
        if capacity - count < n { grow(n) }
    }

    mutating func grow(_ n: Int) {
        let newCap = Swift.max(capacity * 2, count + n, 256)
        let p = UnsafeMutableRawPointer.allocate(byteCount: newCap, alignment: 16)
        if let old = base {
            p.copyMemory(from: old, byteCount: count)
            old.deallocate()
        }
        base = p
        capacity = newCap
    }

    @inline(__always) mutating func putByte(_ b: UInt8) {
        reserve(1)
        base.unsafelyUnwrapped.storeBytes(of: b, toByteOffset: count, as: UInt8.self)
        count += 1
    }

    @inline(__always) mutating func putLE<I: FixedWidthInteger>(_ v: I) {
        reserve(MemoryLayout<I>.size)
        base.unsafelyUnwrapped.storeBytes(of: v.littleEndian, toByteOffset: count, as: I.self)
        count += MemoryLayout<I>.size
    }

    @inline(__always) mutating func putRaw(_ raw: UnsafeRawBufferPointer) {
        guard raw.count > 0 else { return }
        reserve(raw.count)
        (base.unsafelyUnwrapped + count).copyMemory(from: raw.baseAddress!, byteCount: raw.count)
        count += raw.count
    }

    @inline(__always) mutating func putVarint(_ value: UInt64) {
        reserve(10)
        var v = value
        let p = base.unsafelyUnwrapped
        while v >= 0x80 {
            p.storeBytes(of: UInt8(truncatingIfNeeded: v) | 0x80, toByteOffset: count, as: UInt8.self)
            count += 1
            v >>= 7
        }
        p.storeBytes(of: UInt8(truncatingIfNeeded: v), toByteOffset: count, as: UInt8.self)
        count += 1
    }

    /// Patches a reserved 5-byte header with a padded varint (value < 2^35).
    mutating func storePadded5(at pos: Int, _ value: UInt64) {
        let p = base.unsafelyUnwrapped + pos
        p.storeBytes(of: UInt8(truncatingIfNeeded: value) & 0x7F | 0x80, as: UInt8.self)
        p.storeBytes(of: UInt8(truncatingIfNeeded: value >> 7) & 0x7F | 0x80, toByteOffset: 1, as: UInt8.self)
        p.storeBytes(of: UInt8(truncatingIfNeeded: value >> 14) & 0x7F | 0x80, toByteOffset: 2, as: UInt8.self)
        p.storeBytes(of: UInt8(truncatingIfNeeded: value >> 21) & 0x7F | 0x80, toByteOffset: 3, as: UInt8.self)
        p.storeBytes(of: UInt8(truncatingIfNeeded: value >> 28) & 0x7F, toByteOffset: 4, as: UInt8.self)
    }

    mutating func storeU32(at pos: Int, _ value: UInt32) {
        base.unsafelyUnwrapped.storeBytes(of: value.littleEndian, toByteOffset: pos, as: UInt32.self)
    }

    var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: count) }

    func free() { base?.deallocate() }
}
