// Evaluates arithmetic expressions in spawned tasks and prints each result; the expression that cannot
// be evaluated is reported as an error while the others succeed (PyOPUS demo/parallel/vm/06-spawn-result.py).
//
//   scripts/run-demo.sh 06-spawn-result 3

import ParallelVM

/// Evaluates integer arithmetic with + - * / ** and parentheses. Throws on anything else (e.g. names).
struct Evaluate: Spawnable {
    var expression: String

    struct EvalError: Error, CustomStringConvertible {
        var description: String
    }

    func run(in task: TaskContext) throws -> Int {
        var parser = Parser(text: Array(expression.filter { !$0.isWhitespace }))
        let value = try parser.sum()
        guard parser.position == parser.text.count else {
            throw EvalError(description: "unexpected '\(parser.text[parser.position])' in \(expression)")
        }
        return value
    }

    /// sum := product (('+'|'-') product)* ; product := power (('*'|'/') power)* ; power := atom ('**' power)?
    struct Parser {
        let text: [Character]
        var position = 0

        mutating func sum() throws -> Int {
            var value = try product()
            while position < text.count, text[position] == "+" || text[position] == "-" {
                let op = text[position]
                position += 1
                let rhs = try product()
                value = op == "+" ? value + rhs : value - rhs
            }
            return value
        }

        mutating func product() throws -> Int {
            var value = try power()
            while position < text.count, text[position] == "/" || (text[position] == "*" && !isPower) {
                let op = text[position]
                position += 1
                let rhs = try power()
                if op == "/" {
                    guard rhs != 0 else { throw EvalError(description: "division by zero") }
                    value /= rhs
                } else {
                    value *= rhs
                }
            }
            return value
        }

        var isPower: Bool { position + 1 < text.count && text[position] == "*" && text[position + 1] == "*" }

        mutating func power() throws -> Int {
            let base = try atom()
            guard isPower else { return base }
            position += 2
            let exponent = try power()
            guard exponent >= 0 else { throw EvalError(description: "negative exponent") }
            return (0..<exponent).reduce(1) { result, _ in result * base }
        }

        mutating func atom() throws -> Int {
            guard position < text.count else { throw EvalError(description: "unexpected end of expression") }
            if text[position] == "(" {
                position += 1
                let value = try sum()
                guard position < text.count, text[position] == ")" else { throw EvalError(description: "missing ')'") }
                position += 1
                return value
            }
            let start = position
            while position < text.count, text[position].isNumber { position += 1 }
            guard position > start else {
                var end = position
                while end < text.count, text[end].isLetter { end += 1 }
                throw EvalError(description: "unknown name '\(String(text[start..<max(end, start + 1)]))'")
            }
            return Int(String(text[start..<position]))!
        }
    }
}

let vm = try VM(functions: [Evaluate.remote])
let expressions = ["1+1", "5*5", "bla*bla", "2**7"]

/// What each expression gave, by index: a number, or the error text.
var outcomes = [String?](repeating: nil, count: expressions.count)

if vm.slots() == 1 {
    // Without mpirun there are no worker slots; evaluate in this process so the demo still shows the results.
    print("No worker slots (not under mpirun): evaluating in this process.")
    for (index, expression) in expressions.enumerated() {
        var parser = Evaluate.Parser(text: Array(expression))
        outcomes[index] = (try? parser.sum()).map(String.init) ?? "[EVAL ERROR]"
    }
} else {
    // Spawn one task per expression as slots free up, and remember which task evaluates which expression.
    var next = 0
    var indexOf: [TaskID: Int] = [:]
    while next < expressions.count || !indexOf.isEmpty {
        while next < expressions.count,
            let task = try vm.spawnFunction(Evaluate(expression: expressions[next]), count: 1).first
        {
            indexOf[task] = next
            next += 1
        }
        guard let (source, message) = try vm.receiveMessage(timeout: 60) else {
            print("Timed out waiting for results.")
            break
        }
        switch message {
        case .taskResult(let result):
            if let index = indexOf[source] {
                if result.success {
                    outcomes[index] = String(try result.value(as: Int.self))
                } else {
                    outcomes[index] = "[EVAL ERROR]"
                    print("Task \(source) failed: \(result.error!.message)")
                }
            }
        case .taskExit:
            indexOf[source] = nil
        default:
            break
        }
    }
}

for (expression, outcome) in zip(expressions, outcomes) {
    print("\(expression)=\(outcome ?? "[NO RESULT]")")
}
try vm.finalize()
