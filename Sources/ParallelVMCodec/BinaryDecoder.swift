// Decoder for the wire format described in BinaryEncoder.swift. Every read is bounds-checked
// against the enclosing value, so malformed input throws CodecError and never reads out of range.

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Decodes values produced by `BinaryEncoder`.
///
/// Nesting limit: at most `maxDepth` (128, the same as `BinaryEncoder.maxDepth`) nested values
/// whose own `init(from:)` runs, the top-level value included; deeper input throws `CodecError`
/// with code `.nestingTooDeep` instead of overflowing the stack.
///
/// Sizes: every length, element count and key length read from the input is checked against the
/// bytes that remain before anything is allocated from it, so corrupted input throws `.truncated`
/// or `.corrupted` and never reserves more memory than the input could fill (an unkeyed count
/// never exceeds its payload bytes, since each element takes at least one).
package struct BinaryDecoder {
    /// Most nested values (top level included) a decode accepts; see `BinaryEncoder.maxDepth`.
    package static let maxDepth = BinaryEncoder.maxDepth

    /// Decodes a `T` that must occupy exactly all of `bytes`. The memory only needs to stay valid
    /// for the duration of the call (decoded values never point into it).
    package static func decode<T: Decodable>(_ type: T.Type, from bytes: UnsafeRawBufferPointer) throws(CodecError) -> T
    {
        try decode(type, from: bytes, maxDepth: maxDepth)
    }

    /// Decodes with a nesting limit of `maxDepth` instead of the default (for tests).
    static func decode<T: Decodable>(
        _ type: T.Type,
        from bytes: UnsafeRawBufferPointer,
        maxDepth: Int
    ) throws(CodecError) -> T {
        let input = CodecInput(bytes)
        var pos = 0
        let s: CodecSlot
        do throws(CodecFailure) {
            s = try input.slot(at: &pos, limit: input.size)
            guard pos == input.size else {
                throw CodecFailure(.corrupted, "\(input.size - pos) trailing bytes after the value")
            }
            // Leaf types and trivial arrays need no decoder object at all.
            if let v = try input.decodeFast(T.self, s) { return v }
        } catch {
            throw CodecError(error.code, typeName: String(reflecting: T.self), reason: error.reason)
        }
        let d = CodecCache.decoder(input: input, topType: T.self, root: s)
        d.maxDepth = maxDepth
        let v: T
        do {
            v = try d.decodeSlot(T.self, s, parent: 0, item: .none)
        } catch {
            throw d.convert(error)
        }
        CodecCache.recycle(d)
        return v
    }

    /// Decodes a `T` from an array holding exactly one encoded value.
    package static func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8]) throws(CodecError) -> T {
        try decode(type, from: bytes, maxDepth: maxDepth)
    }

    /// Decodes from an array with a nesting limit of `maxDepth` instead of the default (for tests).
    static func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8], maxDepth: Int) throws(CodecError) -> T {
        do {
            return try bytes.withUnsafeBytes { raw in try decode(type, from: raw, maxDepth: maxDepth) }
        } catch {
            // The closure only throws CodecError; the fallback just keeps this path trap-free.
            throw (error as? CodecError)
                ?? CodecError(.decodingFailed, typeName: String(reflecting: T.self), reason: "\(error)")
        }
    }
}

/// A located value in the input: `tag` plus payload range, or for nil its `.some` depth.
struct CodecSlot {
    var tag: UInt8
    var depth: Int
    var start: Int
    var end: Int
    var length: Int { end - start }
}

/// Context-free failure raised by the low-level readers; the caller adds type and path.
struct CodecFailure: Error {
    let code: CodecError.Code
    let reason: String
    init(_ code: CodecError.Code, _ reason: String) {
        self.code = code
        self.reason = reason
    }
}

/// Raw input plus the primitive readers; a value type so top-level leaf decodes allocate nothing.
struct CodecInput {
    let base: UnsafeRawPointer
    let size: Int

    init(_ bytes: UnsafeRawBufferPointer) {
        base = bytes.baseAddress ?? CodecWire.emptyBase
        size = bytes.count
    }

    var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: size) }

    /// Parses one value header at `pos` and checks its payload fits before `limit`.
    @inline(__always)
    func slot(at pos: inout Int, limit: Int) throws(CodecFailure) -> CodecSlot {
        let h: UInt64
        switch CodecWire.readVarint(base, &pos, limit) {
        case .ok(let v): h = v
        case .truncated:
            throw CodecFailure(.truncated, "truncated input (needed a value header, \(limit - pos) bytes left)")
        case .overflow:
            throw CodecFailure(.corrupted, "malformed value header")
        }
        let tag = UInt8(truncatingIfNeeded: h & 7)
        let n = h >> 3
        if tag == CodecWire.tagNil {
            guard n < 1 << 32 else { throw CodecFailure(.corrupted, "malformed nil header") }
            return CodecSlot(tag: tag, depth: Int(n), start: pos, end: pos)
        }
        guard n <= UInt64(limit - pos) else {
            throw CodecFailure(.truncated, "truncated input (needed \(n) bytes, \(limit - pos) left)")
        }
        let s = CodecSlot(tag: tag, depth: 0, start: pos, end: pos + Int(n))
        pos += Int(n)
        return s
    }

    func mismatch(_ s: CodecSlot, _ expected: String) -> CodecFailure {
        if s.tag == CodecWire.tagNil { return CodecFailure(.valueNotFound, "expected \(expected), found nil") }
        return CodecFailure(
            .typeMismatch,
            "expected \(expected), found \(CodecWire.tagName(s.tag)) of \(s.length) bytes"
        )
    }

    @inline(__always)
    func int<I: FixedWidthInteger>(_ s: CodecSlot, _ type: I.Type) throws(CodecFailure) -> I {
        guard s.tag == CodecWire.tagInt && s.length == MemoryLayout<I>.size else {
            throw mismatch(s, "\(MemoryLayout<I>.size)-byte integer")
        }
        return I(littleEndian: base.loadUnaligned(fromByteOffset: s.start, as: I.self))
    }

    @inline(__always)
    func double(_ s: CodecSlot) throws(CodecFailure) -> Double {
        if s.tag == CodecWire.tagFloat && s.length == 8 {
            return Double(
                bitPattern: UInt64(littleEndian: base.loadUnaligned(fromByteOffset: s.start, as: UInt64.self))
            )
        }
        if s.tag == CodecWire.tagFloat && s.length == 4 { return Double(try float(s)) }
        throw mismatch(s, "8-byte floating-point number")
    }

    @inline(__always)
    func float(_ s: CodecSlot) throws(CodecFailure) -> Float {
        guard s.tag == CodecWire.tagFloat && s.length == 4 else { throw mismatch(s, "4-byte floating-point number") }
        return Float(bitPattern: UInt32(littleEndian: base.loadUnaligned(fromByteOffset: s.start, as: UInt32.self)))
    }

    @inline(__always)
    func bool(_ s: CodecSlot) throws(CodecFailure) -> Bool {
        guard s.tag == CodecWire.tagBool && s.length == 1 else { throw mismatch(s, "Bool") }
        let b = base.load(fromByteOffset: s.start, as: UInt8.self)
        guard b <= 1 else { throw CodecFailure(.corrupted, "invalid Bool byte \(b)") }
        return b == 1
    }

    @inline(__always)
    func string(_ s: CodecSlot) throws(CodecFailure) -> String {
        guard s.tag == CodecWire.tagString else { throw mismatch(s, "string") }
        guard let str = CodecWire.string(base + s.start, s.length) else {
            throw CodecFailure(.corrupted, "invalid UTF-8")
        }
        return str
    }

    /// Validates a raw-array payload for element type `E`; returns the element bytes' range.
    func rawRange<E: CodecRawElement>(_ s: CodecSlot, _ type: E.Type) throws(CodecFailure) -> (start: Int, count: Int) {
        guard s.tag == CodecWire.tagRaw else { throw mismatch(s, "array of \(E.self)") }
        guard s.length >= 1 else { throw CodecFailure(.corrupted, "empty raw array payload") }
        let code = base.load(fromByteOffset: s.start, as: UInt8.self)
        guard code == E.codecRawCode else {
            throw CodecFailure(
                .typeMismatch,
                "expected array of \(E.self), found array of \(CodecWire.rawCodeName(code))"
            )
        }
        let bytes = s.length - 1
        let w = MemoryLayout<E>.stride
        guard bytes % w == 0 else {
            throw CodecFailure(.corrupted, "raw array length \(bytes) is not a multiple of \(w)")
        }
        return (s.start + 1, bytes / w)
    }

    /// One memcpy from the input into a new array (lengths were checked against the input already).
    func rawArray<E: CodecRawElement>(_ s: CodecSlot, _ type: E.Type) throws(CodecFailure) -> [E] {
        let (start, n) = try rawRange(s, E.self)
        if n == 0 { return [] }
        let src = base + start
        let a = [E](unsafeUninitializedCapacity: n) { buf, count in
            UnsafeMutableRawPointer(buf.baseAddress!).copyMemory(from: src, byteCount: n * MemoryLayout<E>.stride)
            count = n
        }
        #if _endian(little)
        return a
        #else
        return a.map { $0.codecLittleEndian }
        #endif
    }

    /// Decodes `T` directly when it has a fast path; nil means "use the generic path" (also used
    /// when an array type was written element by element, e.g. by a custom encoder).
    @inline(__always)
    func decodeFast<T>(_ type: T.Type, _ s: CodecSlot) throws(CodecFailure) -> T? {
        if T.self == Int.self { return unsafeBitCast(try int(s, Int.self), to: T.self) }
        if T.self == String.self { return unsafeBitCast(try string(s), to: T.self) }
        if T.self == Double.self { return unsafeBitCast(try double(s), to: T.self) }
        if T.self == Bool.self { return unsafeBitCast(try bool(s), to: T.self) }
        if T.self == [UInt8].self {
            return s.tag == CodecWire.tagUnkeyed ? nil : unsafeBitCast(try rawArray(s, UInt8.self), to: T.self)
        }
        if T.self == Data.self {
            if s.tag == CodecWire.tagUnkeyed { return nil }
            let (start, n) = try rawRange(s, UInt8.self)
            return unsafeBitCast(Data(bytes: base + start, count: n), to: T.self)
        }
        if T.self == [Double].self {
            return s.tag == CodecWire.tagUnkeyed ? nil : unsafeBitCast(try rawArray(s, Double.self), to: T.self)
        }
        if T.self == [Int].self {
            return s.tag == CodecWire.tagUnkeyed ? nil : unsafeBitCast(try rawArray(s, Int.self), to: T.self)
        }
        if T.self == [Float].self {
            return s.tag == CodecWire.tagUnkeyed ? nil : unsafeBitCast(try rawArray(s, Float.self), to: T.self)
        }
        if T.self == [Int32].self {
            return s.tag == CodecWire.tagUnkeyed ? nil : unsafeBitCast(try rawArray(s, Int32.self), to: T.self)
        }
        if T.self == [Int64].self {
            return s.tag == CodecWire.tagUnkeyed ? nil : unsafeBitCast(try rawArray(s, Int64.self), to: T.self)
        }
        if T.self == Date.self { return unsafeBitCast(Date(timeIntervalSinceReferenceDate: try double(s)), to: T.self) }
        return try decodeFastRare(T.self, s)
    }

    func decodeFastRare<T>(_ type: T.Type, _ s: CodecSlot) throws(CodecFailure) -> T? {
        if T.self == Float.self { return unsafeBitCast(try float(s), to: T.self) }
        if T.self == Int64.self { return unsafeBitCast(try int(s, Int64.self), to: T.self) }
        if T.self == Int32.self { return unsafeBitCast(try int(s, Int32.self), to: T.self) }
        if T.self == UInt8.self { return unsafeBitCast(try int(s, UInt8.self), to: T.self) }
        if T.self == UInt64.self { return unsafeBitCast(try int(s, UInt64.self), to: T.self) }
        if T.self == UInt32.self { return unsafeBitCast(try int(s, UInt32.self), to: T.self) }
        if T.self == UInt.self { return unsafeBitCast(try int(s, UInt.self), to: T.self) }
        if T.self == Int16.self { return unsafeBitCast(try int(s, Int16.self), to: T.self) }
        if T.self == UInt16.self { return unsafeBitCast(try int(s, UInt16.self), to: T.self) }
        if T.self == Int8.self { return unsafeBitCast(try int(s, Int8.self), to: T.self) }
        if s.tag == CodecWire.tagUnkeyed { return nil }
        if T.self == [UInt32].self { return unsafeBitCast(try rawArray(s, UInt32.self), to: T.self) }
        if T.self == [UInt64].self { return unsafeBitCast(try rawArray(s, UInt64.self), to: T.self) }
        if T.self == [UInt].self { return unsafeBitCast(try rawArray(s, UInt.self), to: T.self) }
        if T.self == [Int16].self { return unsafeBitCast(try rawArray(s, Int16.self), to: T.self) }
        if T.self == [UInt16].self { return unsafeBitCast(try rawArray(s, UInt16.self), to: T.self) }
        if T.self == [Int8].self { return unsafeBitCast(try rawArray(s, Int8.self), to: T.self) }
        return nil
    }

    /// Compares a stored string key with `key` without creating a String.
    @inline(__always)
    func keyEquals(_ k: CodecWire.KeyRef, _ key: String) -> Bool {
        var s = key
        return s.withUTF8 { u in
            guard u.count == k.length else { return false }
            let p = base + k.start
            for i in 0..<u.count where u[i] != p.load(fromByteOffset: i, as: UInt8.self) { return false }
            return true
        }
    }

    @inline(__always)
    func matches<K: CodingKey>(_ k: CodecWire.KeyRef, _ key: K) -> Bool {
        if let i = key.intValue { return k.isInt && k.int == i }
        return !k.isInt && keyEquals(k, key.stringValue)
    }
}

extension CodecWire {
    static func rawCodeName(_ code: UInt8) -> String {
        switch code {
        case UInt8.codecRawCode: return "UInt8"
        case Int8.codecRawCode: return "Int8"
        case UInt16.codecRawCode: return "UInt16"
        case Int16.codecRawCode: return "Int16"
        case UInt32.codecRawCode: return "UInt32"
        case Int32.codecRawCode: return "Int32"
        case UInt64.codecRawCode: return "UInt64"
        case Int64.codecRawCode: return "Int64"
        case Float.codecRawCode: return "Float"
        case Double.codecRawCode: return "Double"
        default: return "unknown element code \(code)"
        }
    }
}

// MARK: - Decoder implementation

/// Lets the decoder build an `Optional` of any wrapped type without knowing it statically.
protocol CodecOptionalDecodable {
    static func decodeWrapped(_ d: BinaryDecoderImpl, _ s: CodecSlot, parent: Int, item: CodecPathItem) throws -> Self
}

extension Optional: CodecOptionalDecodable where Wrapped: Decodable {
    static func decodeWrapped(_ d: BinaryDecoderImpl, _ s: CodecSlot, parent: Int, item: CodecPathItem) throws -> Self {
        if s.tag == CodecWire.tagNil {
            if s.depth == 0 { return .none }
            var inner = s
            inner.depth -= 1
            return .some(try d.decodeSlot(Wrapped.self, inner, parent: parent, item: item))
        }
        return .some(try d.decodeSlot(Wrapped.self, s, parent: parent, item: item))
    }
}

/// One step of the coding path, plus the key-scan state of a keyed container on that step.
/// Nodes live in a stack-like array that shrinks when a value finishes, so tracking paths and
/// cursors allocates nothing per value (the element type is trivial).
struct CodecPathNode {
    var parent: Int
    var item: CodecPathItem
    /// Distinguishes reuses of the same array slot, so a stale container cannot misuse state.
    var gen: Int
    /// Payload start of the keyed container scanned on this node (-1: none yet).
    var scanStart: Int
    /// Offset of the entry expected next when keys are decoded in encoding order.
    var cursor: Int
    /// Index into `BinaryDecoderImpl.tables` once the full key table was needed (-1: not built).
    var table: Int
}

/// All entries of one keyed container, built only when keys are requested out of order.
struct CodecKeyTable {
    struct Entry {
        var key: CodecWire.KeyRef
        var keyPos: Int
        var slot: CodecSlot
    }
    enum HashKey: Hashable {
        case int(Int)
        case string(String)
    }
    var entries: [Entry]
    var index: [HashKey: Int]? = nil
}

/// The `Decoder` handed to `init(from:)`. Containers are small structs over byte ranges.
final class BinaryDecoderImpl: Decoder {
    @exclusivity(unchecked) var input: CodecInput
    @exclusivity(unchecked) var topType: any Any.Type
    // Unchecked exclusivity: single-threaded use; avoids runtime access tracking per value.
    /// Value whose `init(from:)` is running, its type (for messages) and its path node.
    @exclusivity(unchecked) var current: CodecSlot
    @exclusivity(unchecked) var currentType: any Any.Type
    @exclusivity(unchecked) var node = 0
    @exclusivity(unchecked) var nodes: [CodecPathNode]
    @exclusivity(unchecked) var tables: [CodecKeyTable] = []
    @exclusivity(unchecked) var gen = 0
    /// Values whose `init(from:)` is running (the recursion depth) and the most allowed.
    @exclusivity(unchecked) var depth = 0
    @exclusivity(unchecked) var maxDepth = BinaryDecoder.maxDepth

    init(input: CodecInput, topType: any Any.Type, root: CodecSlot) {
        self.input = input
        self.topType = topType
        self.current = root
        self.currentType = topType
        nodes = [CodecPathNode(parent: -1, item: .none, gen: 0, scanStart: -1, cursor: 0, table: -1)]
        nodes.reserveCapacity(16)
    }

    func reset(input: CodecInput, topType: any Any.Type, root: CodecSlot) {
        self.input = input
        self.topType = topType
        current = root
        currentType = topType
        node = 0
        gen = 0
        depth = 0
        if nodes.count > 1 { nodes.removeLast(nodes.count - 1) }
        nodes[0] = CodecPathNode(parent: -1, item: .none, gen: 0, scanStart: -1, cursor: 0, table: -1)
        if !tables.isEmpty { tables.removeAll(keepingCapacity: true) }
    }

    var codingPath: [any CodingKey] { CodecPathItem.keys(items(node), bytes: input.bytes) }
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    @inline(__always)
    func push(_ parent: Int, _ item: CodecPathItem) -> Int {
        gen &+= 1
        nodes.append(CodecPathNode(parent: parent, item: item, gen: gen, scanStart: -1, cursor: 0, table: -1))
        return nodes.count - 1
    }

    func items(_ node: Int) -> [CodecPathItem] {
        var out: [CodecPathItem] = []
        var n = node
        while n >= 0 && n < nodes.count {
            out.append(nodes[n].item)
            n = nodes[n].parent
        }
        return out.reversed()
    }

    func keys(_ node: Int) -> [any CodingKey] { CodecPathItem.keys(items(node), bytes: input.bytes) }

    func error(
        _ f: CodecFailure,
        _ valueType: any Any.Type,
        node: Int,
        item: CodecPathItem = .none,
        name: String? = nil
    ) -> CodecError {
        var it = items(node)
        it.append(item)
        return CodecError(
            f.code,
            typeName: String(reflecting: topType),
            valueTypeName: String(reflecting: valueType),
            codingPath: CodecPathItem.render(it, bytes: input.bytes, name: name),
            reason: f.reason
        )
    }

    func convert(_ error: any Error) -> CodecError {
        if let e = error as? CodecError { return e }
        if let f = error as? CodecFailure { return self.error(f, currentType, node: node) }
        return CodecError.wrapping(
            error,
            code: .decodingFailed,
            typeName: String(reflecting: topType),
            valueTypeName: String(reflecting: currentType),
            codingPath: CodecPathItem.render(items(node), bytes: input.bytes),
            encoding: false
        )
    }

    /// Decodes one value located by `s`: fast paths, then Optional, then the type's own `init(from:)`.
    func decodeSlot<T: Decodable>(_ type: T.Type, _ s: CodecSlot, parent: Int, item: CodecPathItem) throws -> T {
        do {
            if let v = try input.decodeFast(T.self, s) { return v }
        } catch {
            throw self.error(error, T.self, node: parent, item: item)
        }
        if codecIsOptionalType(T.self) {
            return try (T.self as! any CodecOptionalDecodable.Type).decodeWrapped(self, s, parent: parent, item: item)
                as! T
        }
        guard depth < maxDepth else { throw tooDeep(T.self, parent: parent, item: item) }
        depth += 1
        let savedSlot = current
        let savedType = currentType
        let savedNode = node
        let savedNodes = nodes.count
        let savedTables = tables.count
        current = s
        currentType = T.self
        node = push(parent, item)
        defer {
            // Also on failure: user code may catch the error (`try?`) and keep decoding.
            depth -= 1
            current = savedSlot
            currentType = savedType
            node = savedNode
            nodes.removeLast(nodes.count - savedNodes)
            if tables.count > savedTables { tables.removeLast(tables.count - savedTables) }
        }
        do {
            return try T(from: self)
        } catch let e as CodecError {
            throw e
        } catch {
            throw convert(error)  // runs before the deferred restore, so the path is the failing one
        }
    }

    /// The error for a value of type `type` that would nest deeper than `maxDepth`; the path is
    /// elided in the middle so it stays readable.
    @inline(never)
    func tooDeep(_ type: any Any.Type, parent: Int, item: CodecPathItem) -> CodecError {
        var it = items(parent)
        it.append(item)
        let top = String(reflecting: topType)
        return CodecError(
            .nestingTooDeep,
            typeName: top,
            valueTypeName: String(reflecting: type),
            codingPath: CodecPathItem.renderElided(it, bytes: input.bytes),
            reason: "values nested deeper than the maximum depth of \(maxDepth) (BinaryDecoder.maxDepth) "
                + "while decoding \(top)"
        )
    }

    func keyed<Key: CodingKey>(
        _ s: CodecSlot,
        node parent: Int,
        item: CodecPathItem,
        _ type: Key.Type
    ) throws -> KeyedDecodingContainer<Key> {
        guard s.tag == CodecWire.tagKeyed else {
            throw error(input.mismatch(s, "keyed container"), currentType, node: parent, item: item)
        }
        let n: Int
        if case .none = item { n = parent } else { n = push(parent, item) }
        if nodes[n].scanStart != s.start {
            nodes[n].scanStart = s.start
            nodes[n].cursor = s.start
            nodes[n].table = -1
        }
        return KeyedDecodingContainer(
            BinaryKeyedDecoding<Key>(
                core: CodecKeyedCore(d: self, start: s.start, end: s.end, node: n, gen: nodes[n].gen)
            )
        )
    }

    func unkeyed(_ s: CodecSlot, node parent: Int, item: CodecPathItem) throws -> BinaryUnkeyedDecoding {
        let n: Int
        if case .none = item { n = parent } else { n = push(parent, item) }
        do {
            return try BinaryUnkeyedDecoding(d: self, slot: s, node: n)
        } catch {
            throw self.error(error, currentType, node: n)
        }
    }

    // MARK: Decoder

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        try keyed(current, node: node, item: .none, Key.self)
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        try unkeyed(current, node: node, item: .none)
    }

    func singleValueContainer() throws -> any SingleValueDecodingContainer {
        BinarySingleValueDecoding(d: self, slot: current, node: node)
    }
}

/// Decoder over one slot, returned by `superDecoder()`.
struct BinarySubDecoder: Decoder {
    let d: BinaryDecoderImpl
    let slot: CodecSlot
    let node: Int
    var codingPath: [any CodingKey] { d.keys(node) }
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        try d.keyed(slot, node: node, item: .none, Key.self)
    }
    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        try d.unkeyed(slot, node: node, item: .none)
    }
    func singleValueContainer() throws -> any SingleValueDecodingContainer {
        BinarySingleValueDecoding(d: d, slot: slot, node: node)
    }
}

/// Non-generic body of the keyed container: `KeyedDecodingContainer` calls reach our methods
/// unspecialised (through the stdlib box), so the work is done here on plain (int, string) keys.
struct CodecKeyedCore {
    let d: BinaryDecoderImpl
    let start: Int
    let end: Int
    let node: Int
    let gen: Int

    typealias Entry = CodecKeyTable.Entry

    @inline(__always)
    private var valid: Bool { node < d.nodes.count && d.nodes[node].gen == gen }

    @inline(__always)
    func matches(_ k: CodecWire.KeyRef, _ int: Int?, _ string: String) -> Bool {
        if let i = int { return k.isInt && k.int == i }
        return !k.isInt && d.input.keyEquals(k, string)
    }

    /// Parses every entry once (only when keys are requested out of order or enumerated).
    func entries() throws(CodecFailure) -> [Entry] {
        var out: [Entry] = []
        var p = start
        let base = d.input.base
        while p < end {
            let kp = p
            guard let k = CodecWire.parseKey(base, &p, end) else { throw CodecFailure(.corrupted, "malformed key") }
            let s = try d.input.slot(at: &p, limit: end)
            out.append(Entry(key: k, keyPos: kp, slot: s))
        }
        return out
    }

    /// Index into `d.tables`, building the table on first use; nil for a stale container.
    func tableIndex() throws(CodecFailure) -> Int? {
        guard valid else { return nil }
        if d.nodes[node].table < 0 {
            d.tables.append(CodecKeyTable(entries: try entries()))
            d.nodes[node].table = d.tables.count - 1
        }
        return d.nodes[node].table
    }

    /// Finds a key: first the entry at the cursor (keys usually come back in encoding order),
    /// otherwise via the lazily built table (hashed when large).
    func find(_ int: Int?, _ string: String, consume: Bool) throws(CodecFailure) -> Entry? {
        let isValid = valid
        if isValid {
            var p = d.nodes[node].cursor
            if p < end {
                let kp = p
                if let k = CodecWire.parseKey(d.input.base, &p, end), matches(k, int, string) {
                    let s = try d.input.slot(at: &p, limit: end)
                    if consume { d.nodes[node].cursor = p }
                    return Entry(key: k, keyPos: kp, slot: s)
                }
            }
        }
        guard let t = try tableIndex() else {
            return try entries().first { matches($0.key, int, string) }  // stale: correct, uncached
        }
        let count = d.tables[t].entries.count
        var found: Int? = nil
        if count <= 16 {
            for i in 0..<count where matches(d.tables[t].entries[i].key, int, string) {
                found = i
                break
            }
        } else {
            if d.tables[t].index == nil {
                var idx: [CodecKeyTable.HashKey: Int] = [:]
                idx.reserveCapacity(count)
                for (i, e) in d.tables[t].entries.enumerated() {
                    let hk: CodecKeyTable.HashKey =
                        e.key.isInt
                        ? .int(e.key.int)
                        : .string(CodecWire.string(d.input.base + e.key.start, e.key.length) ?? "")
                    if idx[hk] == nil { idx[hk] = i }
                }
                d.tables[t].index = idx
            }
            found = d.tables[t].index![int.map { .int($0) } ?? .string(string)]
        }
        guard let i = found else { return nil }
        let e = d.tables[t].entries[i]
        if consume { d.nodes[node].cursor = e.slot.end }
        return e
    }

    func allEntries() -> [Entry] {
        do {
            if let t = try tableIndex() { return d.tables[t].entries }
            return try entries()
        } catch {
            return []
        }
    }

    func keyError(_ f: CodecFailure, _ type: any Any.Type, _ int: Int?, _ string: String) -> CodecError {
        d.error(f, type, node: node, name: int.map { String($0) } ?? string)
    }

    /// CodecSlot for a required key.
    @inline(__always)
    func required(_ int: Int?, _ string: String, _ type: any Any.Type) throws -> Entry {
        let e: Entry?
        do { e = try find(int, string, consume: true) } catch { throw keyError(error, type, int, string) }
        guard let e else { throw keyError(CodecFailure(.keyNotFound, "key not found"), type, int, string) }
        return e
    }

    @inline(__always)
    func leaf<T>(_ int: Int?, _ string: String, _ read: (CodecInput, CodecSlot) throws(CodecFailure) -> T) throws -> T {
        let e = try required(int, string, T.self)
        do { return try read(d.input, e.slot) } catch {
            throw d.error(error, T.self, node: node, item: .bufferKey(e.keyPos))
        }
    }

    @inline(__always)
    func leafIfPresent<T>(
        _ int: Int?,
        _ string: String,
        _ read: (CodecInput, CodecSlot) throws(CodecFailure) -> T
    ) throws -> T? {
        let e: Entry?
        do { e = try find(int, string, consume: true) } catch { throw keyError(error, T.self, int, string) }
        guard let e, e.slot.tag != CodecWire.tagNil else { return nil }
        do { return try read(d.input, e.slot) } catch {
            throw d.error(error, T.self, node: node, item: .bufferKey(e.keyPos))
        }
    }

    func decode<T: Decodable>(_ type: T.Type, _ int: Int?, _ string: String) throws -> T {
        let e = try required(int, string, T.self)
        return try d.decodeSlot(T.self, e.slot, parent: node, item: .bufferKey(e.keyPos))
    }

    func decodeIfPresent<T: Decodable>(_ type: T.Type, _ int: Int?, _ string: String) throws -> T? {
        let e: Entry?
        do { e = try find(int, string, consume: true) } catch { throw keyError(error, T.self, int, string) }
        guard let e else { return nil }
        // Mirrors encodeIfPresent: for an optional T the outer Optional was encoded as well.
        if codecIsOptionalType(T.self) {
            return try d.decodeSlot(Optional<T>.self, e.slot, parent: node, item: .bufferKey(e.keyPos))
        }
        if e.slot.tag == CodecWire.tagNil { return nil }
        return try d.decodeSlot(T.self, e.slot, parent: node, item: .bufferKey(e.keyPos))
    }

    func superDecoder(_ int: Int?, _ string: String) throws -> any Decoder {
        let e: Entry?
        do { e = try find(int, string, consume: true) } catch { throw keyError(error, d.currentType, int, string) }
        // A missing entry behaves like nil, as with JSONDecoder.
        guard let e else {
            return BinarySubDecoder(
                d: d,
                slot: CodecSlot(tag: CodecWire.tagNil, depth: 0, start: end, end: end),
                node: node
            )
        }
        return BinarySubDecoder(d: d, slot: e.slot, node: d.push(node, .bufferKey(e.keyPos)))
    }
}

/// Keyed container: thin typed wrapper over `CodecKeyedCore`.
struct BinaryKeyedDecoding<Key: CodingKey>: KeyedDecodingContainerProtocol {
    let core: CodecKeyedCore

    var codingPath: [any CodingKey] { core.d.keys(core.node) }

    var allKeys: [Key] {
        let input = core.d.input
        return core.allEntries().compactMap { e in
            if e.key.isInt { return Key(intValue: e.key.int) ?? Key(stringValue: String(e.key.int)) }
            return Key(stringValue: CodecWire.string(input.base + e.key.start, e.key.length) ?? "")
        }
    }

    @inline(__always) private func parts(_ key: Key) -> (Int?, String) {
        let i = key.intValue
        return (i, i == nil ? key.stringValue : "")
    }

    func contains(_ key: Key) -> Bool {
        let (i, s) = parts(key)
        return ((try? core.find(i, s, consume: false)) ?? nil) != nil
    }

    func decodeNil(forKey key: Key) throws -> Bool {
        let (i, s) = parts(key)
        let e: CodecKeyTable.Entry?
        do { e = try core.find(i, s, consume: false) } catch { throw core.keyError(error, Never?.self, i, s) }
        guard let e else { throw core.keyError(CodecFailure(.keyNotFound, "key not found"), Never?.self, i, s) }
        return e.slot.tag == CodecWire.tagNil
    }

    func decode(_ type: Bool.Type, forKey key: Key) throws -> Bool {
        let (i, s) = parts(key)
        return try core.leaf(i, s) { (inp, sl) throws(CodecFailure) in try inp.bool(sl) }
    }
    func decode(_ type: String.Type, forKey key: Key) throws -> String {
        let (i, s) = parts(key)
        return try core.leaf(i, s) { (inp, sl) throws(CodecFailure) in try inp.string(sl) }
    }
    func decode(_ type: Double.Type, forKey key: Key) throws -> Double {
        let (i, s) = parts(key)
        return try core.leaf(i, s) { (inp, sl) throws(CodecFailure) in try inp.double(sl) }
    }
    func decode(_ type: Float.Type, forKey key: Key) throws -> Float {
        let (i, s) = parts(key)
        return try core.leaf(i, s) { (inp, sl) throws(CodecFailure) in try inp.float(sl) }
    }
    func decode(_ type: Int.Type, forKey key: Key) throws -> Int {
        let (i, s) = parts(key)
        return try core.leaf(i, s) { (inp, sl) throws(CodecFailure) in try inp.int(sl, type) }
    }
    func decode(_ type: Int8.Type, forKey key: Key) throws -> Int8 {
        let (i, s) = parts(key)
        return try core.leaf(i, s) { (inp, sl) throws(CodecFailure) in try inp.int(sl, type) }
    }
    func decode(_ type: Int16.Type, forKey key: Key) throws -> Int16 {
        let (i, s) = parts(key)
        return try core.leaf(i, s) { (inp, sl) throws(CodecFailure) in try inp.int(sl, type) }
    }
    func decode(_ type: Int32.Type, forKey key: Key) throws -> Int32 {
        let (i, s) = parts(key)
        return try core.leaf(i, s) { (inp, sl) throws(CodecFailure) in try inp.int(sl, type) }
    }
    func decode(_ type: Int64.Type, forKey key: Key) throws -> Int64 {
        let (i, s) = parts(key)
        return try core.leaf(i, s) { (inp, sl) throws(CodecFailure) in try inp.int(sl, type) }
    }
    func decode(_ type: UInt.Type, forKey key: Key) throws -> UInt {
        let (i, s) = parts(key)
        return try core.leaf(i, s) { (inp, sl) throws(CodecFailure) in try inp.int(sl, type) }
    }
    func decode(_ type: UInt8.Type, forKey key: Key) throws -> UInt8 {
        let (i, s) = parts(key)
        return try core.leaf(i, s) { (inp, sl) throws(CodecFailure) in try inp.int(sl, type) }
    }
    func decode(_ type: UInt16.Type, forKey key: Key) throws -> UInt16 {
        let (i, s) = parts(key)
        return try core.leaf(i, s) { (inp, sl) throws(CodecFailure) in try inp.int(sl, type) }
    }
    func decode(_ type: UInt32.Type, forKey key: Key) throws -> UInt32 {
        let (i, s) = parts(key)
        return try core.leaf(i, s) { (inp, sl) throws(CodecFailure) in try inp.int(sl, type) }
    }
    func decode(_ type: UInt64.Type, forKey key: Key) throws -> UInt64 {
        let (i, s) = parts(key)
        return try core.leaf(i, s) { (inp, sl) throws(CodecFailure) in try inp.int(sl, type) }
    }
    @available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
    func decode(_ type: Int128.Type, forKey key: Key) throws -> Int128 {
        let (i, s) = parts(key)
        return try core.leaf(i, s) { (inp, sl) throws(CodecFailure) in try inp.int(sl, type) }
    }
    @available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
    func decode(_ type: UInt128.Type, forKey key: Key) throws -> UInt128 {
        let (i, s) = parts(key)
        return try core.leaf(i, s) { (inp, sl) throws(CodecFailure) in try inp.int(sl, type) }
    }

    func decodeIfPresent(_ type: Bool.Type, forKey key: Key) throws -> Bool? {
        let (i, s) = parts(key)
        return try core.leafIfPresent(i, s) { (inp, sl) throws(CodecFailure) in try inp.bool(sl) }
    }
    func decodeIfPresent(_ type: String.Type, forKey key: Key) throws -> String? {
        let (i, s) = parts(key)
        return try core.leafIfPresent(i, s) { (inp, sl) throws(CodecFailure) in try inp.string(sl) }
    }
    func decodeIfPresent(_ type: Double.Type, forKey key: Key) throws -> Double? {
        let (i, s) = parts(key)
        return try core.leafIfPresent(i, s) { (inp, sl) throws(CodecFailure) in try inp.double(sl) }
    }
    func decodeIfPresent(_ type: Float.Type, forKey key: Key) throws -> Float? {
        let (i, s) = parts(key)
        return try core.leafIfPresent(i, s) { (inp, sl) throws(CodecFailure) in try inp.float(sl) }
    }
    func decodeIfPresent(_ type: Int.Type, forKey key: Key) throws -> Int? {
        let (i, s) = parts(key)
        return try core.leafIfPresent(i, s) { (inp, sl) throws(CodecFailure) in try inp.int(sl, type) }
    }
    func decodeIfPresent(_ type: Int8.Type, forKey key: Key) throws -> Int8? {
        let (i, s) = parts(key)
        return try core.leafIfPresent(i, s) { (inp, sl) throws(CodecFailure) in try inp.int(sl, type) }
    }
    func decodeIfPresent(_ type: Int16.Type, forKey key: Key) throws -> Int16? {
        let (i, s) = parts(key)
        return try core.leafIfPresent(i, s) { (inp, sl) throws(CodecFailure) in try inp.int(sl, type) }
    }
    func decodeIfPresent(_ type: Int32.Type, forKey key: Key) throws -> Int32? {
        let (i, s) = parts(key)
        return try core.leafIfPresent(i, s) { (inp, sl) throws(CodecFailure) in try inp.int(sl, type) }
    }
    func decodeIfPresent(_ type: Int64.Type, forKey key: Key) throws -> Int64? {
        let (i, s) = parts(key)
        return try core.leafIfPresent(i, s) { (inp, sl) throws(CodecFailure) in try inp.int(sl, type) }
    }
    func decodeIfPresent(_ type: UInt.Type, forKey key: Key) throws -> UInt? {
        let (i, s) = parts(key)
        return try core.leafIfPresent(i, s) { (inp, sl) throws(CodecFailure) in try inp.int(sl, type) }
    }
    func decodeIfPresent(_ type: UInt8.Type, forKey key: Key) throws -> UInt8? {
        let (i, s) = parts(key)
        return try core.leafIfPresent(i, s) { (inp, sl) throws(CodecFailure) in try inp.int(sl, type) }
    }
    func decodeIfPresent(_ type: UInt16.Type, forKey key: Key) throws -> UInt16? {
        let (i, s) = parts(key)
        return try core.leafIfPresent(i, s) { (inp, sl) throws(CodecFailure) in try inp.int(sl, type) }
    }
    func decodeIfPresent(_ type: UInt32.Type, forKey key: Key) throws -> UInt32? {
        let (i, s) = parts(key)
        return try core.leafIfPresent(i, s) { (inp, sl) throws(CodecFailure) in try inp.int(sl, type) }
    }
    func decodeIfPresent(_ type: UInt64.Type, forKey key: Key) throws -> UInt64? {
        let (i, s) = parts(key)
        return try core.leafIfPresent(i, s) { (inp, sl) throws(CodecFailure) in try inp.int(sl, type) }
    }
    @available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
    func decodeIfPresent(_ type: Int128.Type, forKey key: Key) throws -> Int128? {
        let (i, s) = parts(key)
        return try core.leafIfPresent(i, s) { (inp, sl) throws(CodecFailure) in try inp.int(sl, type) }
    }
    @available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
    func decodeIfPresent(_ type: UInt128.Type, forKey key: Key) throws -> UInt128? {
        let (i, s) = parts(key)
        return try core.leafIfPresent(i, s) { (inp, sl) throws(CodecFailure) in try inp.int(sl, type) }
    }

    func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T {
        let (i, s) = parts(key)
        return try core.decode(T.self, i, s)
    }

    func decodeIfPresent<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T? {
        let (i, s) = parts(key)
        return try core.decodeIfPresent(T.self, i, s)
    }

    func nestedContainer<NestedKey: CodingKey>(
        keyedBy type: NestedKey.Type,
        forKey key: Key
    ) throws -> KeyedDecodingContainer<NestedKey> {
        let (i, s) = parts(key)
        let e = try core.required(i, s, core.d.currentType)
        return try core.d.keyed(e.slot, node: core.node, item: .bufferKey(e.keyPos), NestedKey.self)
    }

    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
        let (i, s) = parts(key)
        let e = try core.required(i, s, core.d.currentType)
        return try core.d.unkeyed(e.slot, node: core.node, item: .bufferKey(e.keyPos))
    }

    func superDecoder() throws -> any Decoder { try core.superDecoder(nil, "super") }
    func superDecoder(forKey key: Key) throws -> any Decoder {
        let (i, s) = parts(key)
        return try core.superDecoder(i, s)
    }
}

/// Unkeyed container over a list of values or a raw array (elements read as numbers).
struct BinaryUnkeyedDecoding: UnkeyedDecodingContainer {
    let d: BinaryDecoderImpl
    var pos: Int
    let end: Int
    let node: Int
    let count: Int?
    var currentIndex = 0
    /// Non-zero when iterating a raw array: element width and the tag each element reads as.
    let rawWidth: Int
    let rawTag: UInt8

    init(d: BinaryDecoderImpl, slot s: CodecSlot, node: Int) throws(CodecFailure) {
        self.d = d
        self.node = node
        end = s.end
        let base = d.input.base
        if s.tag == CodecWire.tagUnkeyed {
            guard s.length >= 4 else { throw CodecFailure(.corrupted, "unkeyed container shorter than its count") }
            let n = Int(UInt32(littleEndian: base.loadUnaligned(fromByteOffset: s.start, as: UInt32.self)))
            // Every element takes at least one byte, so a larger count is corrupt.
            guard n <= s.length - 4 else {
                throw CodecFailure(.corrupted, "unkeyed count \(n) exceeds its \(s.length - 4) payload bytes")
            }
            count = n
            pos = s.start + 4
            rawWidth = 0
            rawTag = 0
        } else if s.tag == CodecWire.tagRaw {
            guard s.length >= 1 else { throw CodecFailure(.corrupted, "empty raw array payload") }
            let code = base.load(fromByteOffset: s.start, as: UInt8.self)
            let w = Int(code & 0x0F)
            let cls = code >> 4
            guard w == 1 || w == 2 || w == 4 || w == 8, cls <= 2, (s.length - 1) % w == 0 else {
                throw CodecFailure(.corrupted, "invalid raw array element code \(code)")
            }
            count = (s.length - 1) / w
            pos = s.start + 1
            rawWidth = w
            rawTag = cls == 2 ? CodecWire.tagFloat : CodecWire.tagInt
        } else {
            throw d.input.mismatch(s, "unkeyed container")
        }
    }

    var codingPath: [any CodingKey] { d.keys(node) }
    var isAtEnd: Bool { currentIndex >= count.unsafelyUnwrapped }

    private mutating func next(_ type: any Any.Type) throws -> CodecSlot {
        guard currentIndex < count.unsafelyUnwrapped else {
            throw d.error(
                CodecFailure(.valueNotFound, "unkeyed container is at end"),
                type,
                node: node,
                item: .index(currentIndex)
            )
        }
        let s: CodecSlot
        if rawWidth > 0 {
            s = CodecSlot(tag: rawTag, depth: 0, start: pos, end: pos + rawWidth)
            pos += rawWidth
        } else {
            do { s = try d.input.slot(at: &pos, limit: end) } catch {
                throw d.error(error, type, node: node, item: .index(currentIndex))
            }
        }
        currentIndex += 1
        return s
    }

    @inline(__always)
    private mutating func leaf<T>(_ read: (CodecInput, CodecSlot) throws(CodecFailure) -> T) throws -> T {
        let s = try next(T.self)
        do { return try read(d.input, s) } catch {
            throw d.error(error, T.self, node: node, item: .index(currentIndex - 1))
        }
    }

    mutating func decodeNil() throws -> Bool {
        guard currentIndex < count.unsafelyUnwrapped else {
            throw d.error(
                CodecFailure(.valueNotFound, "unkeyed container is at end"),
                Never?.self,
                node: node,
                item: .index(currentIndex)
            )
        }
        if rawWidth > 0 { return false }
        var p = pos
        let s: CodecSlot
        do { s = try d.input.slot(at: &p, limit: end) } catch {
            throw d.error(error, Never?.self, node: node, item: .index(currentIndex))
        }
        guard s.tag == CodecWire.tagNil else { return false }
        pos = p
        currentIndex += 1
        return true
    }

    mutating func decode(_ type: Bool.Type) throws -> Bool { try leaf { (i, s) throws(CodecFailure) in try i.bool(s) } }
    mutating func decode(_ type: String.Type) throws -> String {
        try leaf { (i, s) throws(CodecFailure) in try i.string(s) }
    }
    mutating func decode(_ type: Double.Type) throws -> Double {
        try leaf { (i, s) throws(CodecFailure) in try i.double(s) }
    }
    mutating func decode(_ type: Float.Type) throws -> Float {
        try leaf { (i, s) throws(CodecFailure) in try i.float(s) }
    }
    mutating func decode(_ type: Int.Type) throws -> Int {
        try leaf { (i, s) throws(CodecFailure) in try i.int(s, type) }
    }
    mutating func decode(_ type: Int8.Type) throws -> Int8 {
        try leaf { (i, s) throws(CodecFailure) in try i.int(s, type) }
    }
    mutating func decode(_ type: Int16.Type) throws -> Int16 {
        try leaf { (i, s) throws(CodecFailure) in try i.int(s, type) }
    }
    mutating func decode(_ type: Int32.Type) throws -> Int32 {
        try leaf { (i, s) throws(CodecFailure) in try i.int(s, type) }
    }
    mutating func decode(_ type: Int64.Type) throws -> Int64 {
        try leaf { (i, s) throws(CodecFailure) in try i.int(s, type) }
    }
    mutating func decode(_ type: UInt.Type) throws -> UInt {
        try leaf { (i, s) throws(CodecFailure) in try i.int(s, type) }
    }
    mutating func decode(_ type: UInt8.Type) throws -> UInt8 {
        try leaf { (i, s) throws(CodecFailure) in try i.int(s, type) }
    }
    mutating func decode(_ type: UInt16.Type) throws -> UInt16 {
        try leaf { (i, s) throws(CodecFailure) in try i.int(s, type) }
    }
    mutating func decode(_ type: UInt32.Type) throws -> UInt32 {
        try leaf { (i, s) throws(CodecFailure) in try i.int(s, type) }
    }
    mutating func decode(_ type: UInt64.Type) throws -> UInt64 {
        try leaf { (i, s) throws(CodecFailure) in try i.int(s, type) }
    }
    @available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
    mutating func decode(_ type: Int128.Type) throws -> Int128 {
        try leaf { (i, s) throws(CodecFailure) in try i.int(s, type) }
    }
    @available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
    mutating func decode(_ type: UInt128.Type) throws -> UInt128 {
        try leaf { (i, s) throws(CodecFailure) in try i.int(s, type) }
    }

    mutating func decode<T: Decodable>(_ type: T.Type) throws -> T {
        let s = try next(T.self)
        return try d.decodeSlot(T.self, s, parent: node, item: .index(currentIndex - 1))
    }

    mutating func decodeIfPresent<T: Decodable>(_ type: T.Type) throws -> T? {
        if isAtEnd { return nil }
        let s = try next(T.self)
        if codecIsOptionalType(T.self) {
            return try d.decodeSlot(Optional<T>.self, s, parent: node, item: .index(currentIndex - 1))
        }
        if s.tag == CodecWire.tagNil { return nil }
        return try d.decodeSlot(T.self, s, parent: node, item: .index(currentIndex - 1))
    }

    mutating func nestedContainer<NestedKey: CodingKey>(
        keyedBy type: NestedKey.Type
    ) throws -> KeyedDecodingContainer<NestedKey> {
        let s = try next(d.currentType)
        return try d.keyed(s, node: node, item: .index(currentIndex - 1), NestedKey.self)
    }

    mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer {
        let s = try next(d.currentType)
        return try d.unkeyed(s, node: node, item: .index(currentIndex - 1))
    }

    mutating func superDecoder() throws -> any Decoder {
        let s = try next(d.currentType)
        return BinarySubDecoder(d: d, slot: s, node: d.push(node, .index(currentIndex - 1)))
    }
}

/// Single-value container over one slot.
struct BinarySingleValueDecoding: SingleValueDecodingContainer {
    let d: BinaryDecoderImpl
    let slot: CodecSlot
    let node: Int
    var codingPath: [any CodingKey] { d.keys(node) }

    @inline(__always)
    private func leaf<T>(_ read: (CodecInput, CodecSlot) throws(CodecFailure) -> T) throws -> T {
        do { return try read(d.input, slot) } catch { throw d.error(error, T.self, node: node) }
    }

    func decodeNil() -> Bool { slot.tag == CodecWire.tagNil }
    func decode(_ type: Bool.Type) throws -> Bool { try leaf { (i, s) throws(CodecFailure) in try i.bool(s) } }
    func decode(_ type: String.Type) throws -> String { try leaf { (i, s) throws(CodecFailure) in try i.string(s) } }
    func decode(_ type: Double.Type) throws -> Double { try leaf { (i, s) throws(CodecFailure) in try i.double(s) } }
    func decode(_ type: Float.Type) throws -> Float { try leaf { (i, s) throws(CodecFailure) in try i.float(s) } }
    func decode(_ type: Int.Type) throws -> Int { try leaf { (i, s) throws(CodecFailure) in try i.int(s, type) } }
    func decode(_ type: Int8.Type) throws -> Int8 { try leaf { (i, s) throws(CodecFailure) in try i.int(s, type) } }
    func decode(_ type: Int16.Type) throws -> Int16 { try leaf { (i, s) throws(CodecFailure) in try i.int(s, type) } }
    func decode(_ type: Int32.Type) throws -> Int32 { try leaf { (i, s) throws(CodecFailure) in try i.int(s, type) } }
    func decode(_ type: Int64.Type) throws -> Int64 { try leaf { (i, s) throws(CodecFailure) in try i.int(s, type) } }
    func decode(_ type: UInt.Type) throws -> UInt { try leaf { (i, s) throws(CodecFailure) in try i.int(s, type) } }
    func decode(_ type: UInt8.Type) throws -> UInt8 { try leaf { (i, s) throws(CodecFailure) in try i.int(s, type) } }
    func decode(_ type: UInt16.Type) throws -> UInt16 { try leaf { (i, s) throws(CodecFailure) in try i.int(s, type) } }
    func decode(_ type: UInt32.Type) throws -> UInt32 { try leaf { (i, s) throws(CodecFailure) in try i.int(s, type) } }
    func decode(_ type: UInt64.Type) throws -> UInt64 { try leaf { (i, s) throws(CodecFailure) in try i.int(s, type) } }
    @available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
    func decode(_ type: Int128.Type) throws -> Int128 { try leaf { (i, s) throws(CodecFailure) in try i.int(s, type) } }
    @available(macOS 15.0, iOS 18.0, watchOS 11.0, tvOS 18.0, visionOS 2.0, *)
    func decode(_ type: UInt128.Type) throws -> UInt128 {
        try leaf { (i, s) throws(CodecFailure) in try i.int(s, type) }
    }

    /// Transparent: the wrapped value's payload is this container's payload.
    func decode<T: Decodable>(_ type: T.Type) throws -> T {
        try d.decodeSlot(T.self, slot, parent: node, item: .none)
    }
}
