import Foundation
// Stand-in until the binary codec lands.
struct CodecError: Error, CustomStringConvertible { var description: String }
enum BinaryEncoder {
    static func encode<T: Encodable>(_ value: T, into buffer: inout [UInt8]) throws {
        buffer.append(contentsOf: try JSONEncoder().encode([value]))
    }
    static func encode<T: Encodable>(_ value: T) throws -> [UInt8] { var b: [UInt8] = []; try encode(value, into: &b); return b }
}
enum BinaryDecoder {
    static func decode<T: Decodable>(_ type: T.Type, from bytes: UnsafeRawBufferPointer) throws -> T {
        try JSONDecoder().decode([T].self, from: Data(bytes))[0]
    }
    static func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8]) throws -> T {
        try bytes.withUnsafeBytes { try decode(type, from: $0) }
    }
}
