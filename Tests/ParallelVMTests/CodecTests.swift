import Foundation
import Testing

@testable import ParallelVM
@testable import ParallelVMCodec

// MARK: - Fixtures

private struct Point: Codable, Hashable {
    var x: Int
    var y: Int
}

private struct Mixed: Codable, Equatable {
    var i: Int
    var d: Double
    var s: String
}

private struct AllInts: Codable, Equatable {
    var i8: Int8, i16: Int16, i32: Int32, i64: Int64, i: Int
    var u8: UInt8, u16: UInt16, u32: UInt32, u64: UInt64, u: UInt
}

private struct Optionals: Codable, Equatable {
    var a: Int?
    var b: String?
    var c: Int??
    var d: [Int?]
    var e: Point?
}

private struct Empty: Codable, Equatable {}

private final class Node: Codable, Equatable {
    var name: String
    var children: [Node]
    init(name: String, children: [Node] = []) {
        self.name = name
        self.children = children
    }
    static func == (l: Node, r: Node) -> Bool { l.name == r.name && l.children == r.children }
}

private class Animal: Codable, Equatable {
    var legs: Int
    init(legs: Int) { self.legs = legs }
    static func == (l: Animal, r: Animal) -> Bool { l.isEqual(r) }
    func isEqual(_ o: Animal) -> Bool { type(of: o) == type(of: self) && o.legs == legs }
}

/// Subclass that stores its superclass through superEncoder()/superDecoder().
private final class Dog: Animal {
    var name: String
    init(legs: Int, name: String) {
        self.name = name
        super.init(legs: legs)
    }
    enum CodingKeys: String, CodingKey { case name }
    required init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        name = try c.decode(String.self, forKey: .name)
        try super.init(from: c.superDecoder())
    }
    override func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(name, forKey: .name)
        try super.encode(to: c.superEncoder())
    }
    override func isEqual(_ o: Animal) -> Bool { super.isEqual(o) && (o as? Dog)?.name == name }
}

/// Subclass sharing its parent's keyed container (super.encode(to: encoder)).
private final class Cat: Animal {
    var lives: Int
    init(legs: Int, lives: Int) {
        self.lives = lives
        super.init(legs: legs)
    }
    enum CodingKeys: String, CodingKey { case lives }
    required init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        lives = try c.decode(Int.self, forKey: .lives)
        try super.init(from: decoder)
    }
    override func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(lives, forKey: .lives)
        try super.encode(to: encoder)
    }
    override func isEqual(_ o: Animal) -> Bool { super.isEqual(o) && (o as? Cat)?.lives == lives }
}

private enum Color: String, Codable { case red, green, blue }
private enum Level: Int, Codable {
    case low = 1
    case high = 99
}

private indirect enum Shape: Codable, Equatable {
    case circle(radius: Double)
    case rect(Double, Double)
    case named(String, tags: [String]?)
    case nothing
    case nested(Shape?)
}

/// Decodes keys in a different order than encoded and inspects allKeys/contains/decodeNil.
private struct Picky: Codable, Equatable {
    var a: Int
    var b: String
    var c: Double?
    var hadC: Bool = false
    var keyCount: Int = 0

    enum CodingKeys: String, CodingKey { case a, b, c, missing }

    init(a: Int, b: String, c: Double?) {
        self.a = a
        self.b = b
        self.c = c
    }

    func encode(to encoder: any Encoder) throws {
        var k = encoder.container(keyedBy: CodingKeys.self)
        try k.encode(a, forKey: .a)
        try k.encode(b, forKey: .b)
        if let c { try k.encode(c, forKey: .c) } else { try k.encodeNil(forKey: .c) }
    }

    init(from decoder: any Decoder) throws {
        let k = try decoder.container(keyedBy: CodingKeys.self)
        keyCount = k.allKeys.count
        #expect(!k.contains(.missing))
        hadC = k.contains(.c)
        c = try k.decodeNil(forKey: .c) ? nil : try k.decode(Double.self, forKey: .c)
        b = try k.decode(String.self, forKey: .b)
        a = try k.decode(Int.self, forKey: .a)
    }
}

/// Uses nested keyed/unkeyed containers explicitly.
private struct Nested: Codable, Equatable {
    var id: Int
    var coords: [Double]
    var meta: [String: String]

    enum CodingKeys: String, CodingKey { case id, body }
    enum BodyKeys: String, CodingKey { case coords, meta }

    init(id: Int, coords: [Double], meta: [String: String]) {
        self.id = id
        self.coords = coords
        self.meta = meta
    }

    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        var body = c.nestedContainer(keyedBy: BodyKeys.self, forKey: .body)
        var list = body.nestedUnkeyedContainer(forKey: .coords)
        for v in coords { try list.encode(v) }
        try body.encode(meta, forKey: .meta)
        try c.encode(id, forKey: .id)  // parent written after the nested ones
    }

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        id = try c.decode(Int.self, forKey: .id)
        let body = try c.nestedContainer(keyedBy: BodyKeys.self, forKey: .body)
        var list = try body.nestedUnkeyedContainer(forKey: .coords)
        var out: [Double] = []
        if let n = list.count { out.reserveCapacity(n) }
        while !list.isAtEnd { out.append(try list.decode(Double.self)) }
        coords = out
        meta = try body.decode([String: String].self, forKey: .meta)
    }
}

/// Single-value wrapper.
private struct Meters: Codable, Equatable {
    var value: Double
    init(_ v: Double) { value = v }
    init(from decoder: any Decoder) throws { value = try decoder.singleValueContainer().decode(Double.self) }
    func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(value)
    }
}

/// Single-value container holding an optional.
private struct MaybeName: Codable, Equatable {
    var name: String?
    init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        name = c.decodeNil() ? nil : try c.decode(String.self)
    }
    init(_ n: String?) { name = n }
    func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        if let name { try c.encode(name) } else { try c.encodeNil() }
    }
}

/// Unkeyed container of heterogeneous values, including nils and nested containers.
private struct Tuple: Codable, Equatable {
    var a: Int
    var b: String?
    var c: Point
    var d: [Int8]

    init(a: Int, b: String?, c: Point, d: [Int8]) {
        self.a = a
        self.b = b
        self.c = c
        self.d = d
    }
    enum PK: String, CodingKey { case x, y }

    func encode(to encoder: any Encoder) throws {
        var u = encoder.unkeyedContainer()
        try u.encode(a)
        if let b { try u.encode(b) } else { try u.encodeNil() }
        var p = u.nestedContainer(keyedBy: PK.self)
        try p.encode(c.x, forKey: .x)
        try p.encode(c.y, forKey: .y)
        var inner = u.nestedUnkeyedContainer()
        for v in d { try inner.encode(v) }
    }

    init(from decoder: any Decoder) throws {
        var u = try decoder.unkeyedContainer()
        // A throw rather than #expect: randomGarbageNeverTraps feeds this random bytes, which can
        // form a valid container of another size.
        guard u.count == 4 else {
            throw DecodingError.dataCorrupted(.init(codingPath: u.codingPath, debugDescription: "expected 4 fields"))
        }
        a = try u.decode(Int.self)
        b = try u.decodeNil() ? nil : try u.decode(String.self)
        let p = try u.nestedContainer(keyedBy: PK.self)
        c = Point(x: try p.decode(Int.self, forKey: .x), y: try p.decode(Int.self, forKey: .y))
        var inner = try u.nestedUnkeyedContainer()
        var out: [Int8] = []
        while !inner.isAtEnd { out.append(try inner.decode(Int8.self)) }
        d = out
        #expect(u.isAtEnd)
    }
}

private struct WithBlob: Codable, Equatable {
    var name: String
    var samples: [Double]
    var bytes: [UInt8]
    var data: Data
    var floats: [Float]
    var ints: [Int]
    var i32: [Int32]
    var i64: [Int64]
    var u16: [UInt16]
}

private struct Foundationy: Codable, Equatable {
    var date: Date
    var url: URL
    var data: Data
    var relative: URL
}

/// Decodes an array written by the [Double] fast path through a plain unkeyed container.
private struct ManualDoubles: Decodable, Equatable {
    var values: [Double]
    init(from decoder: any Decoder) throws {
        var u = try decoder.unkeyedContainer()
        var out: [Double] = []
        while !u.isAtEnd { out.append(try u.decode(Double.self)) }
        values = out
    }
}

private struct Failing: Encodable {
    struct Inner: Encodable {
        func encode(to encoder: any Encoder) throws {
            throw EncodingError.invalidValue(0, .init(codingPath: encoder.codingPath, debugDescription: "boom"))
        }
    }
    var ok = 1
    var inner = [Inner(), Inner()]
}

private struct Wide: Codable, Equatable {
    var k00 = 0, k01 = 1, k02 = 2, k03 = 3, k04 = 4, k05 = 5, k06 = 6, k07 = 7, k08 = 8, k09 = 9
    var k10 = 10, k11 = 11, k12 = 12, k13 = 13, k14 = 14, k15 = 15, k16 = 16, k17 = 17, k18 = 18, k19 = 19
}

/// Same keys as Wide but decoded in reverse order (exercises the hashed key table).
private struct WideReversed: Decodable {
    var values: [Int] = []
    init(from decoder: any Decoder) throws {
        struct K: CodingKey {
            var stringValue: String
            var intValue: Int? { nil }
            init(stringValue: String) { self.stringValue = stringValue }
            init?(intValue: Int) { nil }
        }
        let c = try decoder.container(keyedBy: K.self)
        for i in (0..<20).reversed() {
            values.append(try c.decode(Int.self, forKey: K(stringValue: String(format: "k%02d", i))))
        }
    }
}

private func roundTrip<T: Codable>(_ v: T) throws -> T {
    let bytes = try BinaryEncoder.encode(v)
    return try BinaryDecoder.decode(T.self, from: bytes)
}

// MARK: - Round trips

@Suite struct CodecRoundTripTests {
    @Test func integersAtEveryWidth() throws {
        let lo = AllInts(i8: .min, i16: .min, i32: .min, i64: .min, i: .min, u8: 0, u16: 0, u32: 0, u64: 0, u: 0)
        let hi = AllInts(
            i8: .max,
            i16: .max,
            i32: .max,
            i64: .max,
            i: .max,
            u8: .max,
            u16: .max,
            u32: .max,
            u64: .max,
            u: .max
        )
        #expect(try roundTrip(lo) == lo)
        #expect(try roundTrip(hi) == hi)
        #expect(try roundTrip(Int8(-5)) == -5)
        #expect(try roundTrip(UInt16(65000)) == 65000)
        #expect(try roundTrip(Int32.min) == .min)
        #expect(try roundTrip(UInt64.max) == .max)
        #expect(try roundTrip(UInt.max) == .max)
        #expect(try roundTrip(Int64(-1)) == -1)
        struct Wide128: Codable, Equatable {
            var a: Int128
            var b: UInt128
            var c: [Int128]
        }
        let w = Wide128(a: .min, b: .max, c: [-1, 0, 12_345_678_901_234_567_890_123])
        #expect(try roundTrip(w) == w)
        #expect(try roundTrip(Int128.min) == .min)
    }

    @Test func floatingPointIncludingSpecials() throws {
        for d in [
            0.0, -0.0, 1.5, -3.25e300, .pi, .infinity, -.infinity, .nan, .leastNonzeroMagnitude,
            .greatestFiniteMagnitude,
        ] {
            #expect(try roundTrip(d).bitPattern == d.bitPattern)
        }
        for f: Float in [0, -0.0, 1.5, .infinity, -.infinity, .nan, .leastNonzeroMagnitude] {
            #expect(try roundTrip(f).bitPattern == f.bitPattern)
        }
        let nanArray = [Double.nan, .infinity, 1]
        #expect(try roundTrip(nanArray).map(\.bitPattern) == nanArray.map(\.bitPattern))
    }

    @Test func boolsAndStrings() throws {
        #expect(try roundTrip(true) == true)
        #expect(try roundTrip(false) == false)
        for s in [
            "", "a", "héllo wörld", "日本語テキスト", "emoji 👩‍👩‍👧‍👦🇫🇷", String(repeating: "x", count: 100_000), "nul\u{0}inside",
        ] {
            #expect(try roundTrip(s) == s)
        }
        #expect(try roundTrip([true, false, true]) == [true, false, true])
    }

    @Test func topLevelNonContainers() throws {
        #expect(try roundTrip(42) == 42)
        #expect(try roundTrip("top") == "top")
        let bytes: [UInt8] = [0, 1, 2, 255]
        #expect(try roundTrip(bytes) == bytes)
        #expect(try roundTrip([UInt8]()) == [])
        #expect(try roundTrip([Double]()) == [])
        #expect(try roundTrip(Meters(3.5)) == Meters(3.5))
        // A top-level Int costs header + 8 bytes.
        #expect(try BinaryEncoder.encode(7).count == 9)
    }

    @Test func optionals() throws {
        #expect(try roundTrip(Int?.none) == nil)
        #expect(try roundTrip(Int?.some(3)) == 3)
        let states: [Int??] = [.none, .some(.none), .some(.some(7))]
        for s in states {
            #expect(try roundTrip(s) == s)
        }
        #expect(try roundTrip(states) == states)
        let triple: Int??? = .some(.some(.none))
        #expect(try roundTrip(triple) == triple)
        for c in states {
            let v = Optionals(a: nil, b: "x", c: c, d: [1, nil, 3], e: nil)
            #expect(try roundTrip(v) == v)
        }
        let full = Optionals(a: 1, b: nil, c: 2, d: [], e: Point(x: 1, y: 2))
        #expect(try roundTrip(full) == full)
        #expect(try roundTrip([String?]([nil, "a", nil])) == [nil, "a", nil])
        #expect(try roundTrip(MaybeName(nil)) == MaybeName(nil))
        #expect(try roundTrip(MaybeName("n")) == MaybeName("n"))
        #expect(
            try roundTrip([MaybeName?]([nil, MaybeName(nil), MaybeName("z")])) == [nil, MaybeName(nil), MaybeName("z")]
        )
    }

    @Test func omittedIfPresentFieldsAreReallyOmitted() throws {
        let withNil = try BinaryEncoder.encode(Optionals(a: nil, b: nil, c: nil, d: [], e: nil))
        let withValue = try BinaryEncoder.encode(Optionals(a: 1, b: nil, c: nil, d: [], e: nil))
        // a: key (2 bytes) + header (1) + Int (8)
        #expect(withValue.count - withNil.count == 11)
    }

    @Test func collections() throws {
        let nested: [[Int16]] = [[1, 2], [], [-3]]
        #expect(try roundTrip(nested) == nested)
        let strings: [[String]] = [["a", "b"], [], ["ç"]]
        #expect(try roundTrip(strings) == strings)
        let set: Set<String> = ["x", "y", "z"]
        #expect(try roundTrip(set) == set)
        let points: Set<Point> = [Point(x: 1, y: 2), Point(x: -1, y: 0)]
        #expect(try roundTrip(points) == points)
        let byString = ["one": 1, "two": 2, "": 0]
        #expect(try roundTrip(byString) == byString)
        let byInt: [Int: String] = [1: "a", -7: "b", .max: "max", .min: "min"]
        #expect(try roundTrip(byInt) == byInt)
        let byStruct: [Point: String] = [Point(x: 1, y: 2): "a", Point(x: 3, y: 4): "b"]
        #expect(try roundTrip(byStruct) == byStruct)
        let deep: [String: [Int: [Point]]] = ["k": [1: [Point(x: 0, y: 0)], 2: []]]
        #expect(try roundTrip(deep) == deep)
        let big = Dictionary(uniqueKeysWithValues: (0..<500).map { ("key\($0)", $0) })
        #expect(try roundTrip(big) == big)
        let contiguous = ContiguousArray<Double>([1, 2, 3])
        #expect(try roundTrip(contiguous) == contiguous)
    }

    @Test func structsClassesAndInheritance() throws {
        #expect(try roundTrip(Mixed(i: -1, d: 2.5, s: "s")) == Mixed(i: -1, d: 2.5, s: "s"))
        #expect(try roundTrip(Empty()) == Empty())
        #expect(try roundTrip([Empty(), Empty()]) == [Empty(), Empty()])
        let tree = Node(name: "root", children: [Node(name: "a"), Node(name: "b", children: [Node(name: "c")])])
        #expect(try roundTrip(tree) == tree)
        let dog = Dog(legs: 4, name: "Rex")
        let dog2 = try roundTrip(dog)
        #expect(dog2.name == "Rex" && dog2.legs == 4)
        let cat = Cat(legs: 3, lives: 9)
        let cat2 = try roundTrip(cat)
        #expect(cat2.lives == 9 && cat2.legs == 3)
    }

    @Test func enums() throws {
        #expect(try roundTrip(Color.green) == .green)
        #expect(try roundTrip([Level.low, .high]) == [.low, .high])
        let shapes: [Shape] = [
            .circle(radius: 2), .rect(1, 2), .named("n", tags: nil), .named("t", tags: ["a"]),
            .nothing, .nested(nil), .nested(.nested(.circle(radius: 1))),
        ]
        for s in shapes {
            #expect(try roundTrip(s) == s)
        }
        #expect(try roundTrip(shapes) == shapes)
        let byColor: [Color: Int] = [.red: 1, .blue: 2]
        #expect(try roundTrip(byColor) == byColor)
    }

    @Test func customContainers() throws {
        for c in [Optional(1.5), nil] {
            let p = try roundTrip(Picky(a: 7, b: "bee", c: c))
            #expect(p.a == 7 && p.b == "bee" && p.c == c)
            #expect(p.hadC && p.keyCount == 3)
        }
        let n = Nested(id: 9, coords: [1, 2.5, -3], meta: ["k": "v"])
        #expect(try roundTrip(n) == n)
        for t in [
            Tuple(a: 1, b: nil, c: Point(x: 5, y: 6), d: [-1, 2]), Tuple(a: 2, b: "b", c: Point(x: 0, y: 0), d: []),
        ] {
            #expect(try roundTrip(t) == t)
        }
        let w = try BinaryDecoder.decode(WideReversed.self, from: BinaryEncoder.encode(Wide()))
        #expect(w.values == Array((0..<20).reversed()))
    }

    @Test func foundationTypes() throws {
        let v = Foundationy(
            date: Date(timeIntervalSince1970: 1_700_000_000.25),
            url: URL(string: "https://example.com/a?b=c#d")!,
            data: Data([1, 2, 3, 0xFF]),
            relative: URL(string: "sub/path", relativeTo: URL(string: "file:///base/"))!
        )
        #expect(try roundTrip(v) == v)
        #expect(try roundTrip(Data()) == Data())
        #expect(try roundTrip(Data(repeating: 7, count: 1000)) == Data(repeating: 7, count: 1000))
        #expect(try roundTrip([Date(timeIntervalSinceReferenceDate: 0)]) == [Date(timeIntervalSinceReferenceDate: 0)])
    }

    @Test func fastPathArraysInsideStructs() throws {
        let v = WithBlob(
            name: "b",
            samples: (0..<1000).map { Double($0) * 0.5 },
            bytes: Array(0...255),
            data: Data([9, 8, 7]),
            floats: [1, .nan, -2],
            ints: [.min, 0, .max],
            i32: [.min, .max],
            i64: [-1, 1],
            u16: [0, 65535]
        )
        let back = try roundTrip(v)
        #expect(back.samples == v.samples && back.bytes == v.bytes && back.data == v.data)
        #expect(back.floats.map(\.bitPattern) == v.floats.map(\.bitPattern))
        #expect(back.ints == v.ints && back.i32 == v.i32 && back.i64 == v.i64 && back.u16 == v.u16)
        // The raw layout: 1000 doubles cost about 8000 bytes, not one header per element.
        let bytes = try BinaryEncoder.encode(v.samples)
        #expect(bytes.count <= 8000 + 8)
        // Fast-path output is readable element by element by a generic unkeyed container...
        #expect(try BinaryDecoder.decode(ManualDoubles.self, from: bytes).values == v.samples)
        // ...and element-wise output (ContiguousArray) decodes into the fast-path type.
        let generic = try BinaryEncoder.encode(ContiguousArray(v.samples))
        #expect(try BinaryDecoder.decode([Double].self, from: generic) == v.samples)
        // Data and [UInt8] share a representation; [Int] and [Int64] too.
        #expect(try BinaryDecoder.decode(Data.self, from: BinaryEncoder.encode([UInt8]([1, 2]))) == Data([1, 2]))
        #expect(try BinaryDecoder.decode([Int64].self, from: BinaryEncoder.encode([1, 2])) == [1, 2])
    }

    @Test func largeBuffers() throws {
        let big = [UInt8](repeating: 0xAB, count: 10 << 20)
        #expect(try roundTrip(big) == big)
        let doubles = (0..<1_000_000).map { Double($0) }
        #expect(try roundTrip(doubles) == doubles)
    }

    @Test func encodeIntoAppendsAndDecodesFromPointer() throws {
        var buf: [UInt8] = [0xEE, 0xEE]
        try BinaryEncoder.encode(Mixed(i: 1, d: 2, s: "3"), into: &buf)
        #expect(buf[0] == 0xEE && buf[1] == 0xEE)
        let m = try buf.withUnsafeBytes { raw in
            try BinaryDecoder.decode(Mixed.self, from: UnsafeRawBufferPointer(rebasing: raw[2...]))
        }
        #expect(m == Mixed(i: 1, d: 2, s: "3"))
        // A failed encode leaves the buffer as it was.
        let before = buf
        #expect(throws: CodecError.self) { try BinaryEncoder.encode(Failing(), into: &buf) }
        #expect(buf == before)
    }

    @Test func decoderRecoversAfterCaughtErrors() throws {
        struct Source: Codable {
            var p: [String: String]
            var name: String
        }
        struct Fallback: Decodable {
            var point: Point?
            var name: String
            enum K: String, CodingKey { case p, name }
            init(from decoder: any Decoder) throws {
                let c = try decoder.container(keyedBy: K.self)
                point = try? c.decode(Point.self, forKey: .p)  // fails deep inside Point
                // The decoder must be back on this value after the swallowed failure.
                name = try decoder.container(keyedBy: K.self).decode(String.self, forKey: .name)
            }
        }
        let f = try BinaryDecoder.decode(Fallback.self, from: BinaryEncoder.encode(Source(p: ["x": "str"], name: "ok")))
        #expect(f.point == nil && f.name == "ok")

        enum Either: Decodable, Equatable {
            case point(Point)
            case text(String)
            init(from decoder: any Decoder) throws {
                let c = try decoder.singleValueContainer()
                if let p = try? c.decode(Point.self) {
                    self = .point(p)
                } else {
                    self = .text(try c.decode(String.self))
                }
            }
        }
        #expect(try BinaryDecoder.decode(Either.self, from: BinaryEncoder.encode("t")) == .text("t"))
        #expect(
            try BinaryDecoder.decode(Either.self, from: BinaryEncoder.encode(Point(x: 1, y: 2)))
                == .point(Point(x: 1, y: 2))
        )
    }

    @Test func swallowedEncodeErrorStillFailsTheEncode() throws {
        struct Swallow: Encodable {
            func encode(to encoder: any Encoder) throws {
                var c = encoder.unkeyedContainer()
                try? c.encode(Failing.Inner())
                try c.encode(1)
            }
        }
        #expect(throws: CodecError.self) { try BinaryEncoder.encode(Swallow()) }
        // The per-thread encoder is not poisoned for later calls.
        #expect(try roundTrip(Mixed(i: 1, d: 2, s: "x")) == Mixed(i: 1, d: 2, s: "x"))
    }

    @Test func reentrantAndConcurrentUse() async throws {
        struct Reentrant: Codable, Equatable {
            var inner: [UInt8]
            init(_ v: Mixed) throws { inner = try BinaryEncoder.encode(v) }
            func decoded() throws -> Mixed { try BinaryDecoder.decode(Mixed.self, from: inner) }
            init(from decoder: any Decoder) throws {
                let c = try decoder.singleValueContainer()
                inner = try c.decode([UInt8].self)
                _ = try decoded()  // decoding inside decoding
            }
            func encode(to encoder: any Encoder) throws {
                _ = try BinaryEncoder.encode(Mixed(i: 0, d: 0, s: "nested"))  // encoding inside encoding
                var c = encoder.singleValueContainer()
                try c.encode(inner)
            }
        }
        let r = try Reentrant(Mixed(i: 5, d: 6, s: "7"))
        #expect(try roundTrip(r).decoded() == Mixed(i: 5, d: 6, s: "7"))
        try await withThrowingTaskGroup(of: Bool.self) { group in
            for t in 0..<8 {
                group.addTask {
                    for i in 0..<2000 {
                        let v = Mixed(i: t * 10_000 + i, d: Double(i), s: "t\(t)")
                        guard try roundTrip(v) == v else { return false }
                    }
                    return true
                }
            }
            for try await ok in group { #expect(ok) }
        }
    }

    @Test func codingPathIsVisibleToUserCode() throws {
        struct Probe: Codable {
            var path = ""
            init() {}
            init(from decoder: any Decoder) throws {
                path = decoder.codingPath.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: "/")
            }
            func encode(to encoder: any Encoder) throws {
                var c = encoder.singleValueContainer()
                try c.encode(encoder.codingPath.map(\.stringValue).joined(separator: "/"))
            }
        }
        struct Outer: Codable { var list: [Probe] }
        let bytes = try BinaryEncoder.encode(Outer(list: [Probe(), Probe()]))
        let back = try BinaryDecoder.decode(Outer.self, from: bytes)
        #expect(back.list.map(\.path) == ["list/[0]", "list/[1]"])
        struct Echo: Decodable { var list: [String] }
        #expect(try BinaryDecoder.decode(Echo.self, from: bytes).list == ["list/Index 0", "list/Index 1"])
    }
}

// MARK: - Errors

@Suite struct CodecErrorTests {
    @Test func everyTruncatedPrefixThrows() throws {
        let sample = Optionals(a: 5, b: "hello", c: .some(nil), d: [1, nil], e: Point(x: 1, y: 2))
        let full = try BinaryEncoder.encode(sample)
        for n in 0..<full.count {
            #expect(throws: CodecError.self) { try BinaryDecoder.decode(Optionals.self, from: Array(full[..<n])) }
        }
        #expect(try BinaryDecoder.decode(Optionals.self, from: full) == sample)
        let leaf = try BinaryEncoder.encode(123)
        for n in 0..<leaf.count {
            #expect(throws: CodecError.self) { try BinaryDecoder.decode(Int.self, from: Array(leaf[..<n])) }
        }
        do {
            _ = try BinaryDecoder.decode(Int.self, from: Array(leaf[..<3]))
        } catch {
            #expect(error.code == .truncated)
            #expect(error.description.contains("Swift.Int"))
            #expect(error.description.contains("truncated input (needed 8 bytes, 2 left)"))
        }
    }

    @Test func wrongTypeNamesTypeAndPath() throws {
        let bytes = try BinaryEncoder.encode("not a number")
        do {
            _ = try BinaryDecoder.decode(Int.self, from: bytes)
            Issue.record("expected failure")
        } catch {
            #expect(error.code == .typeMismatch)
            #expect(error.typeName == "Swift.Int")
            #expect(error.description.contains("Swift.Int"))
        }
        struct Other: Decodable, Equatable {
            var i: String
            var d: Double
            var s: String
        }
        do {
            _ = try BinaryDecoder.decode(Other.self, from: BinaryEncoder.encode(Mixed(i: 1, d: 2, s: "3")))
            Issue.record("expected failure")
        } catch {
            #expect(error.code == .typeMismatch)
            #expect(error.codingPath == "i")
            #expect(error.valueTypeName == "Swift.String")
            #expect(error.typeName.hasSuffix("Other"))
            #expect(error.description.contains("Other") && error.description.contains("at i"))
        }
        struct Deep: Codable { var a: [Inner] }
        struct Inner: Codable { var b: [String] }
        struct DeepWrong: Decodable { var a: [InnerWrong] }
        struct InnerWrong: Decodable { var b: [Int] }
        let deep = try BinaryEncoder.encode(Deep(a: [Inner(b: []), Inner(b: ["1", "2"])]))
        do {
            _ = try BinaryDecoder.decode(DeepWrong.self, from: deep)
            Issue.record("expected failure")
        } catch {
            #expect(error.codingPath == "a[1].b[0]")
            #expect(error.description.contains("cannot decode Swift.Int at a[1].b[0] (in "))
        }
        // A raw [Int16] read as [Int32] fails at the array itself.
        struct RawDeep: Codable { var b: [Int16] }
        struct RawWrong: Decodable { var b: [Int32] }
        do {
            _ = try BinaryDecoder.decode(RawWrong.self, from: BinaryEncoder.encode(RawDeep(b: [1])))
            Issue.record("expected failure")
        } catch {
            #expect(error.codingPath == "b")
            #expect(error.description.contains("Int32") && error.description.contains("Int16"))
        }
        #expect(throws: CodecError.self) {
            try BinaryDecoder.decode([Double].self, from: BinaryEncoder.encode([1, 2]))
        }
        #expect(throws: CodecError.self) { try BinaryDecoder.decode(Point.self, from: BinaryEncoder.encode([1, 2])) }
        #expect(throws: CodecError.self) { try BinaryDecoder.decode(Int.self, from: BinaryEncoder.encode(Int?.none)) }
        do {
            _ = try BinaryDecoder.decode(Point.self, from: BinaryEncoder.encode(["x": 1]))
            Issue.record("expected failure")
        } catch {
            #expect(error.code == .keyNotFound)
            #expect(error.codingPath == "y")
        }
        // Invalid enum raw values come back as CodecError with the enum's name.
        do {
            _ = try BinaryDecoder.decode(Color.self, from: BinaryEncoder.encode("purple"))
            Issue.record("expected failure")
        } catch {
            #expect(error.description.contains("Color"))
        }
    }

    @Test func corruptedLengthsThrowWithoutAllocating() throws {
        // A header claiming a 2^31-byte string / raw array followed by 3 bytes.
        var w = ByteWriter()
        w.writeVarint((UInt64(1) << 34) | 4)
        w.writeRaw([1, 2, 3])
        #expect(throws: CodecError.self) { try BinaryDecoder.decode(String.self, from: w.bytes) }
        var raw = ByteWriter()
        raw.writeVarint(((UInt64.max >> 4) << 3) | 7)
        raw.writeRaw([1, 2, 3])
        #expect(throws: CodecError.self) { try BinaryDecoder.decode([UInt8].self, from: raw.bytes) }
        // Unkeyed count far larger than the payload.
        var unkeyed = ByteWriter()
        unkeyed.writeVarint(UInt64(6) << 3 | 6)
        unkeyed.write(UInt32.max)
        unkeyed.writeRaw([0, 0])
        do {
            _ = try BinaryDecoder.decode([Point].self, from: unkeyed.bytes)
            Issue.record("expected failure")
        } catch {
            #expect(error.code == .corrupted)
        }
        // Overlong varint.
        #expect(throws: CodecError.self) {
            try BinaryDecoder.decode(Int.self, from: [UInt8](repeating: 0xFF, count: 12))
        }
        // Trailing bytes.
        #expect(throws: CodecError.self) { try BinaryDecoder.decode(Int.self, from: BinaryEncoder.encode(1) + [0]) }
        // Invalid UTF-8 and invalid Bool.
        #expect(throws: CodecError.self) { try BinaryDecoder.decode(String.self, from: [2 << 3 | 4, 0xC3, 0x28]) }
        #expect(throws: CodecError.self) { try BinaryDecoder.decode(Bool.self, from: [1 << 3 | 3, 2]) }
    }

    @Test func randomGarbageNeverTraps() throws {
        var rng = SystemRandomNumberGenerator()
        let valid = try BinaryEncoder.encode(
            Optionals(a: 5, b: "hello", c: .some(nil), d: [1, nil], e: Point(x: 1, y: 2))
        )
        for _ in 0..<3000 {
            var bytes = valid
            for _ in 0..<Int.random(in: 1...4, using: &rng) {
                bytes[Int.random(in: 0..<bytes.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
            }
            _ = try? BinaryDecoder.decode(Optionals.self, from: bytes)
            _ = try? BinaryDecoder.decode([String: [Int]].self, from: bytes)
            _ = try? BinaryDecoder.decode(Shape.self, from: bytes)
        }
        for _ in 0..<3000 {
            let bytes = (0..<Int.random(in: 0...40, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            _ = try? BinaryDecoder.decode(Optionals.self, from: bytes)
            _ = try? BinaryDecoder.decode([Double].self, from: bytes)
            _ = try? BinaryDecoder.decode(Tuple.self, from: bytes)
        }
    }

    @Test func encodingErrorsCarryPath() throws {
        do {
            _ = try BinaryEncoder.encode(Failing())
            Issue.record("expected failure")
        } catch {
            #expect(error.code == .encodingFailed)
            #expect(error.codingPath == "inner[0]")
            #expect(error.description.hasPrefix("cannot encode"))
            #expect(error.description.contains("boom"))
        }
    }
}

// MARK: - ByteWriter / ByteReader

@Suite struct ByteBufferTests {
    @Test func roundTripsPrimitives() throws {
        var w = ByteWriter()
        w.write(UInt8(7))
        w.write(Int16(-2))
        w.write(UInt32(0xDEAD_BEEF))
        w.write(Int64.min)
        w.write(3.5)
        w.write(Float(-1.25))
        w.write(true)
        w.writeVarint(300)
        w.writeVarint(.max)
        w.writeBytes([1, 2, 3])
        w.writeString("héllo")
        w.writeString("")
        let slot = w.count
        w.write(UInt32(0))
        w.patch(UInt32(99), at: slot)
        #expect(Array(w.bytes[1...2]) == [0xFE, 0xFF])  // little-endian

        try w.bytes.withUnsafeBytes { (raw: UnsafeRawBufferPointer) throws -> Void in
            var r = ByteReader(raw)
            #expect(try r.read(UInt8.self) == 7)
            #expect(try r.read(Int16.self) == -2)
            #expect(try r.read(UInt32.self) == 0xDEAD_BEEF)
            #expect(try r.read(Int64.self) == .min)
            #expect(try r.readDouble() == 3.5)
            #expect(try r.readFloat() == -1.25)
            #expect(try r.readBool() == true)
            #expect(try r.readVarint() == 300)
            #expect(try r.readVarint() == .max)
            #expect(try r.readBytes() == [1, 2, 3])
            #expect(try r.readString() == "héllo")
            #expect(try r.readString() == "")
            #expect(try r.read(UInt32.self) == 99)
            #expect(r.isAtEnd)
            #expect(throws: CodecError.self) { try r.read(UInt8.self) }
        }
    }

    @Test func boundsChecksThrow() throws {
        let bytes: [UInt8] = [0x05, 1, 2]  // length 5, only 2 bytes follow
        bytes.withUnsafeBytes { raw in
            var r = ByteReader(raw)
            #expect(throws: CodecError.self) { try r.readBytes() }
            var r2 = ByteReader(raw)
            #expect(throws: CodecError.self) { try r2.read(UInt64.self) }
            var r3 = ByteReader(raw)
            #expect(throws: CodecError.self) { try r3.skip(4) }
            var r4 = ByteReader(UnsafeRawBufferPointer(start: nil, count: 0))
            #expect(throws: CodecError.self) { try r4.readVarint() }
            var r5 = ByteReader(raw)
            #expect(throws: CodecError.self) { try r5.readString() }
            #expect(r5.offset <= 1)
        }
        [UInt8](repeating: 0x80, count: 11).withUnsafeBytes { raw in
            var r = ByteReader(raw)
            #expect(throws: CodecError.self) { try r.readVarint() }
        }
    }
}
