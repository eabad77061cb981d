// Error type shared by BinaryEncoder, BinaryDecoder, ByteWriter and ByteReader.

/// Error thrown by the binary codec: what went wrong, for which type, and where in the value.
package struct CodecError: Error, CustomStringConvertible {
    /// Broad category, so callers can react without parsing `reason`.
    package enum Code: Sendable, Equatable {
        /// A value's `encode(to:)` failed or misused the encoder.
        case encodingFailed
        /// A value's `init(from:)` threw, or the input does not fit the requested type.
        case decodingFailed
        /// The input ends before a length, header or payload does.
        case truncated
        /// The wire value has a different kind or width than the requested type.
        case typeMismatch
        /// A keyed container has no entry for a key the decoder asked for.
        case keyNotFound
        /// A nil was found where a non-optional value was requested.
        case valueNotFound
        /// Malformed input: bad header, bad UTF-8, inconsistent lengths, trailing bytes.
        case corrupted
        /// Values are nested deeper than `BinaryEncoder.maxDepth` / `BinaryDecoder.maxDepth`.
        case nestingTooDeep
    }

    /// Broad category of the failure.
    package let code: Code
    /// `String(reflecting:)` of the top-level type being encoded or decoded.
    package let typeName: String
    /// `String(reflecting:)` of the value being processed where it failed (often a leaf type).
    package let valueTypeName: String
    /// Dotted coding path of the failing value, e.g. `a.b[3].c`; empty at the top level.
    package let codingPath: String
    /// Human-readable cause.
    package let reason: String
    /// Whether the failure happened while encoding (changes the description's verb).
    package let isEncoding: Bool

    init(
        _ code: Code,
        typeName: String,
        valueTypeName: String? = nil,
        codingPath: String = "",
        reason: String,
        encoding: Bool = false
    ) {
        self.code = code
        self.typeName = typeName
        self.valueTypeName = valueTypeName ?? typeName
        self.codingPath = codingPath
        self.reason = reason
        self.isEncoding = encoding
    }

    /// Reads like "cannot decode Swift.Int at a.b[3] (in App.Msg): truncated input (needed 8 bytes, 2 left)".
    package var description: String {
        var s = isEncoding ? "cannot encode " : "cannot decode "
        s += valueTypeName
        if !codingPath.isEmpty { s += " at " + codingPath }
        if valueTypeName != typeName && !typeName.isEmpty { s += " (in " + typeName + ")" }
        s += ": " + reason
        return s
    }
}

/// One component of a coding path. Keys are referenced by their offset in the wire buffer
/// so that tracking the path costs no allocation (the enum is trivially copyable).
enum CodecPathItem {
    case none
    case bufferKey(Int)
    case index(Int)
}

/// Concrete key used to expose `codingPath` to user code.
struct CodecPathKey: CodingKey {
    var stringValue: String
    var intValue: Int?
    init(stringValue: String) {
        self.stringValue = stringValue
        self.intValue = nil
    }
    init(intValue: Int) {
        self.stringValue = String(intValue)
        self.intValue = intValue
    }
    init(index: Int) {
        self.stringValue = "Index \(index)"
        self.intValue = index
    }
}

extension CodecPathItem {
    /// Renders a list of items as `a.b[3].c`; keys stored in `bytes` are decoded from the wire.
    static func render(_ items: [CodecPathItem], bytes: UnsafeRawBufferPointer, name: String? = nil) -> String {
        var out = ""
        for item in items {
            switch item {
            case .none: continue
            case .index(let i): out += "[\(i)]"
            case .bufferKey(let pos):
                if !out.isEmpty { out += "." }
                out += CodecWire.keyDescription(at: pos, in: bytes)
            }
        }
        if let name {
            if !out.isEmpty { out += "." }
            out += name
        }
        return out
    }

    /// Like `render`, but keeps only the first and last `keep` items of a long path, so an error
    /// raised thousands of levels deep stays readable: `a.b.c … x.y.z`.
    static func renderElided(_ items: [CodecPathItem], bytes: UnsafeRawBufferPointer, keep: Int = 6) -> String {
        guard items.count > 2 * keep else { return render(items, bytes: bytes) }
        let head = render(Array(items.prefix(keep)), bytes: bytes)
        let tail = render(Array(items.suffix(keep)), bytes: bytes)
        let sep = tail.hasPrefix("[") ? " …" : " … "
        return head + sep + tail
    }

    /// Builds user-visible coding keys for `items`.
    static func keys(_ items: [CodecPathItem], bytes: UnsafeRawBufferPointer) -> [any CodingKey] {
        var out: [any CodingKey] = []
        for item in items {
            switch item {
            case .none: continue
            case .index(let i): out.append(CodecPathKey(index: i))
            case .bufferKey(let pos):
                switch CodecWire.key(at: pos, in: bytes) {
                case .int(let i): out.append(CodecPathKey(intValue: i))
                case .string(let s): out.append(CodecPathKey(stringValue: s))
                case nil: out.append(CodecPathKey(stringValue: "?"))
                }
            }
        }
        return out
    }
}

extension CodecError {
    /// Converts any error thrown by user code into a CodecError carrying our context.
    static func wrapping(
        _ error: any Error,
        code: Code,
        typeName: String,
        valueTypeName: String,
        codingPath: String,
        encoding: Bool
    ) -> CodecError {
        if let e = error as? CodecError { return e }
        var c = code
        if let d = error as? DecodingError {
            switch d {
            case .typeMismatch: c = .typeMismatch
            case .keyNotFound: c = .keyNotFound
            case .valueNotFound: c = .valueNotFound
            case .dataCorrupted: c = .decodingFailed
            @unknown default: c = .decodingFailed
            }
        }
        return CodecError(
            c,
            typeName: typeName,
            valueTypeName: valueTypeName,
            codingPath: codingPath,
            reason: String(describing: error),
            encoding: encoding
        )
    }
}
