/// Guards the <Tailcalls>false</Tailcalls> setting in Directory.Build.props: the runtime's tail-call
/// helpers can lose a moved array under a Span argument (docs/tailcall-span-repro.fsx), so no
/// F# assembly of ours may carry a `tail.` call.
module NetStack.Tests.TailCallTests

open System
open System.Reflection
open System.Reflection.Emit
open Expecto

/// Operand sizes of every IL opcode, from the runtime's own OpCodes table.
let private opcodes =
    typeof<OpCodes>.GetFields(BindingFlags.Public ||| BindingFlags.Static)
    |> Array.map (fun f -> f.GetValue null :?> OpCode)
    |> Array.map (fun op -> uint16 op.Value, op)
    |> dict

let private operandSize (op: OpCode) (il: byte[]) (at: int) =
    match op.OperandType with
    | OperandType.InlineNone -> 0
    | OperandType.ShortInlineBrTarget
    | OperandType.ShortInlineI
    | OperandType.ShortInlineVar -> 1
    | OperandType.InlineVar -> 2
    | OperandType.InlineI8
    | OperandType.InlineR -> 8
    | OperandType.InlineSwitch -> 4 + 4 * BitConverter.ToInt32(il, at)
    | _ -> 4

/// The methods of `assembly` whose IL has a `tail.` prefix, with the method each one tail-calls.
let tailCalls (assembly: Assembly) =
    let flags =
        BindingFlags.Public
        ||| BindingFlags.NonPublic
        ||| BindingFlags.Static
        ||| BindingFlags.Instance
        ||| BindingFlags.DeclaredOnly

    [
        for t in assembly.GetTypes() do
            let methods: MethodBase seq =
                Seq.append (t.GetMethods flags |> Seq.cast) (t.GetConstructors flags |> Seq.cast)

            for m in methods do
                match m.GetMethodBody() with
                | null -> ()
                | body ->
                    let il = body.GetILAsByteArray()
                    let mutable i = 0

                    while i < il.Length do
                        let code =
                            if il.[i] = 0xFEuy then
                                0xFE00us ||| uint16 il.[i + 1]
                            else
                                uint16 il.[i]

                        let op = opcodes.[code]
                        i <- i + op.Size

                        if op = OpCodes.Tailcall then
                            let next = opcodes.[uint16 il.[i]]
                            let token = BitConverter.ToInt32(il, i + next.Size)

                            let target =
                                try
                                    let callee = m.Module.ResolveMethod token
                                    $"{callee.DeclaringType.Name}.{callee.Name}"
                                with _ ->
                                    $"token 0x{token:x8}"

                            yield $"{t.FullName}.{m.Name} -> {target}"
                        else
                            i <- i + operandSize op il i
    ]

[<Tests>]
let tests =
    testList
        "No tail calls"
        [
            for assembly in
                [
                    typeof<NetStack.Core.Wire.Ipv6Address>.Assembly
                    Assembly.GetExecutingAssembly()
                ] do
                test $"{assembly.GetName().Name} has no tail. call" {
                    let found = tailCalls assembly

                    Expect.isEmpty
                        (List.truncate 10 found)
                        $"{found.Length} tail. calls (build with <Tailcalls>false</Tailcalls>; see docs/tailcall-span-repro.fsx)"
                }
        ]
