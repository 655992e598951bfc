namespace NetStack.Engine;

/// <summary>A completion the engine thread finishes itself, outside every lock (<see cref="InlineCompletions"/>).</summary>
internal interface IInlineCompletion
{
    /// <summary>Sets the result; the awaiting code runs on this thread, until its next wait.</summary>
    void RunInline();
}

/// <summary>
/// The engine thread's own list of completions to finish at the end of its burst, with
/// <see cref="NetStackOptions.UnsafeInlineCompletions"/>: the awaiting code then runs on the
/// engine thread instead of a thread-pool worker (no wake, no hop, no spin-wait), as the runtime's
/// socket engine does with DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS. A completion found under
/// a connection's or socket's lock is only recorded here (running the user's code under it
/// would hold the lock across that code): the loop runs the list when its burst ends, before it
/// waits. Every engine thread also marks itself, so that a blocking call made from it fails
/// instead of waiting for the loop it stops.
/// </summary>
internal sealed class InlineCompletions
{
    [ThreadStatic]
    private static InlineCompletions? t_current;

    [ThreadStatic]
    private static bool t_engineThread;

    // A completion (IInlineCompletion), or an action and its state (a TaskCompletionSource's).
    private readonly record struct Entry(IInlineCompletion? Completion, Action<object?>? Action, object? State);

    private List<Entry> _ready = [];
    private List<Entry> _running = [];
    private readonly NetStackStatistics.Counter _ran;
    private readonly NetStackStatistics.Counter _failed;
    private readonly Action<Exception> _log;

    private InlineCompletions(NetStackStatistics statistics, Action<Exception> log)
    {
        _ran = statistics.Handle("engine.inline-completions");
        _failed = statistics.Handle("engine.inline-completion-error");
        _log = log;
    }

    /// <summary>
    /// Marks the calling thread as an engine loop, with its own list when <paramref name="inline"/>
    /// (null otherwise). Called once, first thing on the loop thread.
    /// </summary>
    public static InlineCompletions? EnterEngineThread(bool inline, NetStackStatistics statistics, Action<Exception> log)
    {
        t_engineThread = true;
        return t_current = inline ? new InlineCompletions(statistics, log) : null;
    }

    /// <summary>
    /// Records <paramref name="completion"/> for the engine thread to run, when the caller is an
    /// engine thread with inline completions; false otherwise (the caller completes it on the
    /// thread pool as usual).
    /// </summary>
    public static bool TryDefer(IInlineCompletion completion)
    {
        var current = t_current;
        if (current is null)
            return false;
        current._ready.Add(new Entry(completion, null, null));
        return true;
    }

    /// <summary>
    /// Has <paramref name="action"/>(<paramref name="state"/>) (the completion of a
    /// <see cref="TaskCompletionSource"/>) run by the engine thread at the end of its burst when
    /// the caller is an engine thread with inline completions, else on the thread pool: a source
    /// made with <see cref="SourceOptions"/>(true) runs its continuations on the thread that
    /// completes it, which must be neither a lock holder nor a user's thread in a NetStack call.
    /// </summary>
    public static void Complete(Action<object?> action, object? state)
    {
        var current = t_current;
        if (current is null)
            ThreadPool.UnsafeQueueUserWorkItem(action, state, preferLocal: false);
        else
            current._ready.Add(new Entry(null, action, state));
    }

    /// <summary>
    /// The options of a <see cref="TaskCompletionSource"/> whose completions go through
    /// <see cref="Complete"/> when <paramref name="inline"/> (the stack's
    /// <see cref="NetStackOptions.UnsafeInlineCompletions"/>): none, so that the continuations run
    /// where Complete runs the completion; otherwise RunContinuationsAsynchronously, as always.
    /// </summary>
    public static TaskCreationOptions SourceOptions(bool inline) =>
        inline ? TaskCreationOptions.None : TaskCreationOptions.RunContinuationsAsynchronously;

    /// <summary>
    /// A blocking call was made on an engine thread (code after an await, run there by
    /// <see cref="NetStackOptions.UnsafeInlineCompletions"/>): it would wait for the very loop it
    /// stops, so it fails at once.
    /// </summary>
    /// <exception cref="InvalidOperationException">The caller is an engine thread.</exception>
    public static void ThrowIfEngineThread(string call)
    {
        if (t_engineThread)
            throw new InvalidOperationException(
                $"{call} blocks, and it was called on a stack's engine thread (code after an await runs there with " +
                $"{nameof(NetStackOptions)}.{nameof(NetStackOptions.UnsafeInlineCompletions)}): it would wait for the loop it stops; use the asynchronous call");
    }

    /// <summary>Completions wait to be run.</summary>
    public bool Pending => _ready.Count > 0;

    /// <summary>
    /// Runs the recorded completions (loop only, no lock held). Completions recorded meanwhile
    /// (the code run closed a connection, say) run in the same call, for a few rounds; what a
    /// longer chain leaves waits for the loop's next pass (<see cref="Pending"/> keeps it awake).
    /// </summary>
    public void Run()
    {
        for (int round = 0; round < 4 && _ready.Count > 0; round++)
        {
            (_running, _ready) = (_ready, _running);
            _ran.Add(_running.Count);
            foreach (var completion in _running)
            {
                try
                {
                    if (completion.Completion is { } c)
                        c.RunInline();
                    else
                        completion.Action!(completion.State);
                }
                catch (Exception e)
                {
                    // A continuation that throws (an async method's does not: its task holds the
                    // exception): on the thread pool it would end the process; here it is counted.
                    _failed.Increment();
                    _log(e);
                }
            }
            _running.Clear();
        }
    }
}
