using System.CommandLine;
using System.CommandLine.Help;
using System.CommandLine.Invocation;

namespace NetStack.Cli;

/// <summary>
/// Entry point of the <c>netstack</c> command: the subcommands as System.CommandLine definitions
/// (generated help, the <c>[suggest]</c> directive for tab completion), and one way of reporting a
/// bad command line: one line on standard error naming what is wrong, exit code 2.
/// </summary>
public static class Program
{
    private static readonly ParserConfiguration Parsing = new()
    {
        // '@file' is an argument like any other (no response files); '-c3' is not '-c 3'.
        ResponseFileTokenReplacer = null,
        EnablePosixBundling = false,
    };

    private static readonly InvocationConfiguration Invocation = new()
    {
        // The commands handle SIGINT/SIGTERM themselves (ShutdownSignal) and report their own
        // failures; a UsageException thrown by an action comes back here.
        EnableDefaultExceptionHandler = false,
        ProcessTerminationTimeout = null,
    };

    /// <summary>The command tree; <paramref name="args"/> is the whole command line (demo and bench re-execute with it).</summary>
    public static RootCommand Root(string[] args)
    {
        var root = new RootCommand(
            "netstack: a userspace TCP/IP stack on a TUN device. 'netstack <command> --help' describes each command and its options. "
            + "Exit codes: 0 success, 1 failure, 2 bad arguments.");
        var details = new Dictionary<Command, string>
        {
            [DemoCommand.Create(args)] = DemoCommand.Details,
            [ServeCommand.Create()] = ServeCommand.Details,
            [PingCommand.Create()] = PingCommand.Details,
            [GetCommand.Create()] = GetCommand.Details,
            [BenchCommand.Create(args)] = BenchCommand.Details,
            [Run.RunCommand.Create()] = Run.RunCommand.Details,
        };
        foreach (var command in details.Keys)
            root.Add(command);
        var help = new Help(details);
        foreach (var option in root.Options.OfType<HelpOption>())
            option.Action = help;
        // 'netstack' alone shows the help, as 'netstack --help' does.
        root.SetAction(help.Invoke);
        return root;
    }

    /// <summary>
    /// The generated help; the command list shows each command's one-line summary, and a
    /// command's own help its whole description.
    /// </summary>
    private sealed class Help(IReadOnlyDictionary<Command, string> details) : SynchronousCommandLineAction
    {
        public override bool ClearsParseErrors => true;

        public override int Invoke(ParseResult parseResult)
        {
            if (details.TryGetValue(parseResult.CommandResult.Command, out var text))
                parseResult.CommandResult.Command.Description = text;
            return new HelpAction().Invoke(parseResult);
        }
    }

    /// <summary>Runs the command line; returns the process exit code.</summary>
    public static int Main(string[] args)
    {
        // Before the thread pool has threads: see MallocArenas (docs/soak.md).
        MallocArenas.Cap();
        // `run` forwards bulk traffic between the loop and thread-pool splices: idle pool
        // threads that spin waiting for work (70 rounds of sched_yield by default) took 5% of
        // the forwarder's processor time and competed with the loop on a busy machine. Set
        // before the pool starts, which reads it once.
        if (args.Length > 0 && args[0] == "run")
            AppContext.SetData("System.Threading.ThreadPool.UnfairSemaphoreSpinLimit", 0);
        if (args.Length > 0 && Internal(args[0]) is { } run)
        {
            try
            {
                return run(args[1..]);
            }
            catch (UsageException e)
            {
                Console.Error.WriteLine(e.Message);
                return UsageException.ExitCode;
            }
        }

        var parsed = Root(args).Parse(args, Parsing);
        var command = CommandName(parsed.CommandResult.Command);
        if (parsed.Errors.Count > 0 && parsed.Action is not Help)
            return Usage(command, parsed.Errors[0].Message.TrimEnd('.'));
        try
        {
            return parsed.Invoke(Invocation);
        }
        catch (UsageException e)
        {
            return Usage(command, e.Message);
        }
    }

    /// <summary>The internal commands netstack runs in its own child processes (positional arguments, not for users).</summary>
    private static Func<string[], int>? Internal(string name) => name switch
    {
        BenchCommand.EchoPeerCommand => BenchCommand.RunEchoPeer,
        IdleBench.ClientsCommand => IdleBench.RunClients,
        SoakBench.LoadCommand => SoakBench.RunLoad,
        Run.NamespaceHelper.Verb => Run.NamespaceHelper.Run,
        _ => null,
    };

    private static string CommandName(Command command) => command is RootCommand ? "netstack" : $"netstack {command.Name}";

    /// <summary>Prints "COMMAND: MESSAGE (see 'COMMAND --help')" on standard error; returns <see cref="UsageException.ExitCode"/>.</summary>
    private static int Usage(string command, string message)
    {
        Console.Error.WriteLine($"{command}: {message} (see '{command} --help')");
        return UsageException.ExitCode;
    }
}

/// <summary>SIGINT and SIGTERM as a cancellation token, so commands can shut down cleanly.</summary>
public sealed class ShutdownSignal : IDisposable
{
    private readonly CancellationTokenSource _cts = new();
    private readonly System.Runtime.InteropServices.PosixSignalRegistration _sigint;
    private readonly System.Runtime.InteropServices.PosixSignalRegistration _sigterm;

    /// <summary>Starts listening for SIGINT and SIGTERM.</summary>
    public ShutdownSignal()
    {
        // Cancel = true stops the runtime's default (terminate at once): we dispose the stack
        // first, which removes the interface, and then exit 0.
        _sigint = System.Runtime.InteropServices.PosixSignalRegistration.Create(
            System.Runtime.InteropServices.PosixSignal.SIGINT, OnSignal);
        _sigterm = System.Runtime.InteropServices.PosixSignalRegistration.Create(
            System.Runtime.InteropServices.PosixSignal.SIGTERM, OnSignal);
    }

    /// <summary>Cancelled when SIGINT or SIGTERM arrives.</summary>
    public CancellationToken Token => _cts.Token;

    private void OnSignal(System.Runtime.InteropServices.PosixSignalContext context)
    {
        context.Cancel = true;
        _cts.Cancel();
    }

    /// <summary>Stops listening; a later signal has its default effect again.</summary>
    public void Dispose()
    {
        _sigint.Dispose();
        _sigterm.Dispose();
        _cts.Dispose();
    }
}

/// <summary>Starting a stack from a command, with its failures turned into one clear line.</summary>
public static class StackStarter
{
    /// <summary>
    /// Starts a stack; on failure prints "<paramref name="command"/>: reason" and returns null.
    /// An <see cref="ArgumentException"/> (the options are wrong) is a usage error (exit 2).
    /// </summary>
    public static NetworkStack? TryStart(string command, NetStackOptions options) =>
        TryStart(command, options, out var error) ?? Fail(command, error);

    /// <summary>Starts a stack; on failure returns null with the reason in <paramref name="error"/>.</summary>
    public static NetworkStack? TryStart(string command, NetStackOptions options, out string error)
    {
        error = "";
        try
        {
            return NetworkStack.Start(options);
        }
        catch (ArgumentException e)
        {
            throw new UsageException(e.Message);
        }
        catch (Exception e)
        {
            error = e.Message;
            return null;
        }
    }

    private static NetworkStack? Fail(string command, string error)
    {
        Console.Error.WriteLine($"{command}: cannot bring the stack up: {error}");
        return null;
    }

    /// <summary>
    /// The counters under which the engine keeps an exception from stopping its loop: handling a
    /// packet threw ("drop.exception"), the loop itself did ("engine.loop-error": a device failure
    /// or a bug), a user call's command did ("engine.command-error"), a continuation the loop ran
    /// itself did ("engine.inline-completion-error", with --unsafe-inline-completions).
    /// </summary>
    public static readonly string[] ExceptionCounters = ["drop.exception", "engine.loop-error", "engine.command-error", "engine.inline-completion-error"];

    /// <summary>
    /// "COMMAND: the stack caught exceptions: NAME N, ..." when one of <see cref="ExceptionCounters"/>
    /// is not zero in <paramref name="snapshot"/>; null when none is.
    /// </summary>
    public static string? ExceptionReport(string command, IReadOnlyDictionary<string, long> snapshot)
    {
        var counted = ExceptionCounters.Where(name => snapshot.GetValueOrDefault(name) != 0)
            .Select(name => $"{name} {snapshot[name]}").ToList();
        return counted.Count == 0 ? null : $"{command}: the stack caught exceptions: {string.Join(", ", counted)}";
    }

    /// <summary>
    /// Owns <paramref name="stack"/> for a command: disposing the result disposes the stack and
    /// then prints <see cref="ExceptionReport"/> on standard error, if there is one.
    /// </summary>
    public static StackScope Owning(string command, NetworkStack stack) => new(command, stack);

    /// <summary>See <see cref="Owning"/>.</summary>
    public readonly struct StackScope(string command, NetworkStack stack) : IDisposable, IAsyncDisposable
    {
        /// <summary>Disposes the stack, then reports the exceptions it caught.</summary>
        public void Dispose()
        {
            stack.Dispose();
            Report();
        }

        /// <summary>Disposes the stack, then reports the exceptions it caught.</summary>
        public async ValueTask DisposeAsync()
        {
            await stack.DisposeAsync();
            Report();
        }

        private void Report()
        {
            if (ExceptionReport(command, stack.Statistics.Snapshot()) is { } report)
                Console.Error.WriteLine(report);
        }
    }

    /// <summary>The statistics as "name value" lines, non-zero counters only, sorted by name.</summary>
    public static string FormatStatistics(IReadOnlyDictionary<string, long> snapshot) =>
        string.Join('\n', snapshot.Where(kv => kv.Value != 0).OrderBy(kv => kv.Key, StringComparer.Ordinal)
            .Select(kv => $"{kv.Key} {kv.Value}"));
}
