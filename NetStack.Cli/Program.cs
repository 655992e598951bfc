namespace NetStack.Cli;

/// <summary>Entry point of the <c>netstack</c> command.</summary>
public static class Program
{
    private const string Usage = """
        netstack: a userspace TCP/IP stack on a TUN device.

        usage: netstack <command> [options]

        commands:
          demo      bring a stack up in a private network namespace and show it working
          serve     bring the stack up and serve until SIGINT/SIGTERM
          ping      bring a stack up and ping a host from it
          --help    show this text

        This build has the packet codecs only (the wire layer of NetStack.Core);
        the commands that bring a stack up arrive with the TUN device and engine.
        """;

    /// <summary>Runs the command line; returns the process exit code.</summary>
    public static int Main(string[] args)
    {
        if (args.Length == 0 || args[0] is "--help" or "-h" or "help")
        {
            Console.WriteLine(Usage);
            return 0;
        }

        switch (args[0])
        {
            case "demo":
            case "serve":
            case "ping":
                Console.Error.WriteLine($"netstack {args[0]}: not available yet in this build (the TUN device and engine are not built yet).");
                return 1;
            default:
                Console.Error.WriteLine($"netstack: unknown command '{args[0]}' (see 'netstack --help').");
                return 2;
        }
    }
}
