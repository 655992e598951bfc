namespace NetStack;

/// <summary>Facts about this build of NetStack.</summary>
public static class NetStackInfo
{
    /// <summary>The informational version of the NetStack.Api assembly.</summary>
    public static string Version =>
        typeof(NetStackInfo).Assembly.GetName().Version?.ToString() ?? "0.0.0";
}
