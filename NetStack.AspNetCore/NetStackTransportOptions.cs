namespace NetStack.AspNetCore;

/// <summary>Options of the NetStack transport for Kestrel (<see cref="NetStackTransportFactory"/>).</summary>
public sealed class NetStackTransportOptions
{
    /// <summary>
    /// Established connections a listener queues for Kestrel's accept loop at most (the listen
    /// backlog, positive). Default 512.
    /// </summary>
    public int Backlog { get; set; } = 512;

    /// <summary>
    /// True (default) to also take endpoints with an unspecified address (<c>http://*:PORT</c>,
    /// <c>ListenAnyIP</c>): they then mean every address of the stack. False leaves them to the
    /// next transport (Kestrel's sockets, on the kernel's addresses), whatever
    /// <see cref="OtherAddressesToKernel"/> says.
    /// </summary>
    public bool BindUnspecifiedAddresses { get; set; } = true;

    /// <summary>
    /// False (default): an endpoint whose address is not the stack's (nor an unspecified one this
    /// transport takes) fails the app's start with a message naming it and the stack's addresses,
    /// so a mistyped URL does not end up listening on the kernel. True: such endpoints go to
    /// Kestrel's socket transport (the kernel's addresses), so one app can serve both.
    /// </summary>
    public bool OtherAddressesToKernel { get; set; }
}
