import ParallelVMCodec
import ParallelVMStorage

/// A function that workers can run: a stable name, `Codable` arguments and a `Codable` result.
///
/// Swift cannot ship code between processes, but every rank runs the same program, so a function is
/// registered under the same name on every rank (pass it to ``VM/init(functions:debug:mirrorMap:startupDir:translateStartupDir:persistentStorage:missingMirrorSources:isolation:setup:logger:)``)
/// and a spawn request carries only the name and the encoded arguments.
///
/// ```swift
/// let double = RemoteFunction("double") { (x: Int, task: TaskContext) in 2 * x }
/// ```
public struct RemoteFunction<Arguments: Codable & Sendable, Result: Codable & Sendable>: Sendable,
    RemoteFunctionConvertible
{
    /// The name the function is registered under on every rank.
    public let name: String
    let body: @Sendable (Arguments, TaskContext) throws -> Result

    /// Creates a function with a stable name and a body that runs on a worker.
    public init(_ name: String, _ body: @escaping @Sendable (Arguments, TaskContext) throws -> Result) {
        self.name = name
        self.body = body
    }

    /// The type-erased form the registry keeps.
    public var erased: AnyRemoteFunction {
        let name = self.name
        let body = self.body
        return AnyRemoteFunction(
            name: name,
            argumentType: _typeName(Arguments.self, qualified: true),
            resultType: _typeName(Result.self, qualified: true)
        ) { arguments, context in
            let decoded: Arguments
            do {
                decoded = try BinaryDecoder.decode(Arguments.self, from: arguments)
            } catch {
                throw TaskFailure(
                    typeName: "ParallelVM.VMError",
                    message:
                        "function '\(name)' could not decode its arguments as \(_typeName(Arguments.self, qualified: true)): \(error)"
                )
            }
            let result = try body(decoded, context)
            do {
                return try BinaryEncoder.encode(result)
            } catch {
                throw TaskFailure(
                    typeName: "ParallelVM.VMError",
                    message:
                        "function '\(name)' could not encode its result of type \(_typeName(Result.self, qualified: true)): \(error)"
                )
            }
        }
    }
}

/// A value that carries its own state to a worker and runs there: the equivalent of spawning a bound
/// method in PyOPUS. The instance is encoded into the spawn request and decoded on the worker.
///
/// ```swift
/// struct Evaluate: Spawnable {
///     var expression: String
///     func run(in task: TaskContext) throws -> Int { ... }
/// }
/// let vm = try VM(functions: [Evaluate.remote])
/// try vm.spawnFunction(Evaluate(expression: "1+1"))
/// ```
public protocol Spawnable: Codable, Sendable {
    /// What ``run(in:)`` returns.
    associatedtype Result: Codable & Sendable
    /// The name the type is registered under; by default its fully qualified type name.
    static var functionName: String { get }
    /// Runs on a worker, with the instance's state as it was when spawned.
    func run(in task: TaskContext) throws -> Result
}

extension Spawnable {
    public static var functionName: String { _typeName(Self.self, qualified: true) }

    /// The function to register so that instances of this type can be spawned.
    public static var remote: RemoteFunction<Self, Result> {
        RemoteFunction(functionName) { instance, task in try instance.run(in: task) }
    }
}

/// Anything that can be registered as a remote function.
public protocol RemoteFunctionConvertible: Sendable {
    /// The type-erased function.
    var erased: AnyRemoteFunction { get }
}

/// A registered function with its types erased: the name, the type names, and a body over encoded bytes.
public struct AnyRemoteFunction: Sendable, RemoteFunctionConvertible {
    /// The registered name.
    public let name: String
    /// The fully qualified name of the argument type.
    public let argumentType: String
    /// The fully qualified name of the result type.
    public let resultType: String
    /// Runs the function on encoded arguments; returns the type name of its result and the encoded result.
    /// The type is `resultType`, except for internal functions that run another one on its behalf (a job
    /// that collects outputs), which give that one's.
    let call: @Sendable ([UInt8], TaskContext) throws -> (type: String, bytes: [UInt8])

    init(
        name: String,
        argumentType: String,
        resultType: String,
        invoke: @escaping @Sendable ([UInt8], TaskContext) throws -> [UInt8]
    ) {
        self.name = name
        self.argumentType = argumentType
        self.resultType = resultType
        self.call = { arguments, context in (resultType, try invoke(arguments, context)) }
    }

    /// A function whose result type is known only once it ran (see `call`).
    init(
        name: String,
        argumentType: String,
        resultType: String,
        call: @escaping @Sendable ([UInt8], TaskContext) throws -> (type: String, bytes: [UInt8])
    ) {
        self.name = name
        self.argumentType = argumentType
        self.resultType = resultType
        self.call = call
    }

    public var erased: AnyRemoteFunction { self }
}

/// The functions this process knows, by name. Filled once, before the VM starts, then only read.
struct FunctionTable: Sendable {
    private(set) var functions: [String: AnyRemoteFunction] = [:]

    mutating func register(_ function: AnyRemoteFunction) throws(VMError) {
        if let existing = functions[function.name] {
            guard existing.argumentType == function.argumentType, existing.resultType == function.resultType else {
                throw VMError(
                    .duplicateFunction,
                    "function '\(function.name)' is registered twice with different types: (\(existing.argumentType)) -> \(existing.resultType) and (\(function.argumentType)) -> \(function.resultType)"
                )
            }
        }
        functions[function.name] = function
    }

    subscript(name: String) -> AnyRemoteFunction? { functions[name] }

    var names: [String] { functions.keys.sorted() }
}
