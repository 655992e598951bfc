/// Checks that the documentation stays true to the code: the rendered TCP state diagram shows
/// every state of the model, and the README links to documents that exist.
module NetStack.Tests.DocsTests

open System.IO
open System.Text.RegularExpressions
open Expecto

let private path rel =
    Path.Combine(TestUtil.repoRoot.Value, rel)

/// The state names declared as nodes in docs/tcp-states.dot (`"Closed" [label="Closed"];`); a
/// StateModel test already keeps that file equal to the model's export.
let private dotStates () =
    Regex.Matches(File.ReadAllText(path "docs/tcp-states.dot"), "^\"(\\w+)\" \\[label=", RegexOptions.Multiline)
    |> Seq.map (fun m -> m.Groups.[1].Value)
    |> List.ofSeq

[<Tests>]
let tests =
    testList
        "Docs"
        [
            test "the DOT file declares the eleven RFC 9293 states" {
                Expect.hasLength (dotStates ()) 11 "one node per TCP state"
            }

            test "docs/tcp-states.svg is a Graphviz rendering that names every state of the DOT file" {
                let svg = File.ReadAllText(path "docs/tcp-states.svg")
                Expect.stringContains svg "<svg" "an SVG document"

                for state in dotStates () do
                    Expect.stringContains svg $">{state}</text>" $"the picture shows {state}"
            }

            test "docs/architecture.md walks the packet path and the threading model" {
                let text = File.ReadAllText(path "docs/architecture.md")

                for word in
                    [
                        "IpLayer.receive"
                        "Reassembly"
                        "Connection.handleSegment"
                        "IpLayer.writeTcp"
                        "eventfd"
                        "tcp-states.svg"
                    ] do
                    Expect.stringContains text word $"architecture.md mentions {word}"
            }

            test "every relative link in the README points to a file of the repository" {
                let readme = File.ReadAllText(path "README.md")

                let links =
                    Regex.Matches(readme, @"\]\(([^)#:]+)\)")
                    |> Seq.map (fun m -> m.Groups.[1].Value)
                    |> List.ofSeq

                Expect.isNonEmpty links "the README links to documents"

                for link in links do
                    let target = path link
                    Expect.isTrue (File.Exists target || Directory.Exists target) $"README link {link} exists"
            }
        ]
