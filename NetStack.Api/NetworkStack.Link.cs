using NetStack.Engine;

namespace NetStack;

/// <summary>
/// Tap mode: the engine drives the link interface (<see cref="Core.Link.Interface"/>, held by the
/// <see cref="EthernetPacketDevice"/> under any capture) on its one loop with its one clock: the
/// adapter reads time from <see cref="Now"/>, the loop runs the interface's timers with its own and
/// its wait ends at the interface's next deadline.
/// </summary>
public sealed partial class NetworkStack
{
    // Tap mode: the Ethernet adapter the loop drives (null: Tun mode, or a caller's device without one).
    private EthernetPacketDevice? _ethernet;

    // Finds the adapter and lends it the engine's clock (unless a test gave it one), which starts
    // its interface: duplicate address detection is due at once, on the loop's first pass.
    private void InitLink(IPacketDevice device)
    {
        _ethernet = LinkWithin(device);
        if (_ethernet is { HasClock: false })
            _ethernet.UseClock(Now);
    }

    private void RunLinkTimers(long now)
    {
        if (_ethernet is { } ethernet && ethernet.NextDeadline <= now)
            ethernet.RunTimers(now);
    }

    private long NextLinkDeadline() => _ethernet?.NextDeadline ?? long.MaxValue;

    /// <summary>
    /// Tap mode: waits until the loop has run duplicate address detection and the start
    /// announcements (<see cref="EthernetPacketDevice.Started"/>), so that a duplicate IPv6 address
    /// fails <see cref="Start(NetStackOptions)"/> with <see cref="DuplicateAddressException"/> as
    /// it always has; the stack is disposed then.
    /// </summary>
    private static NetworkStack AwaitLink(NetworkStack stack)
    {
        if (stack._ethernet is not { } ethernet)
            return stack;
        var neighbor = stack.Options.Neighbor;
        var limit = neighbor.RetransTimer * (neighbor.DadTransmits + 1) + TimeSpan.FromSeconds(30);
        var started = ethernet.Started;
        try
        {
            started.Wait(limit);
        }
        catch (AggregateException)
        {
            // The outcome is read below.
        }

        if (!started.IsCompletedSuccessfully)
        {
            stack.Dispose();
            if (!started.IsCompleted)
                throw new TimeoutException($"The link on '{stack.InterfaceName}' did not start within {limit}.");
            started.GetAwaiter().GetResult();
        }

        return stack;
    }
}
