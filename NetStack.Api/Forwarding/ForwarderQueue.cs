using System.Threading.Channels;

namespace NetStack;

// What the forwarders share: the loop writes what it offers into a channel, the user takes it.
internal static class ForwarderQueue
{
    // The next item; ObjectDisposedException naming `owner` once the forwarder or its stack is gone.
    public static async ValueTask<T> TakeAsync<T>(ChannelReader<T> reader, string owner, CancellationToken cancellationToken)
    {
        try
        {
            return await reader.ReadAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (ChannelClosedException)
        {
            throw new ObjectDisposedException(owner);
        }
    }
}
