using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text.Json;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Interop;

/// <summary>
/// The file layout shared by saved encoders and classifiers: 8 magic bytes, a little-endian int32 header length, a
/// UTF-8 JSON header (which records the payload's length and SHA-256), then the weights as a safetensors payload.
/// Reading checks every length and the checksum, so a truncated or altered file fails with a clear message.
/// </summary>
internal static class WeightsContainer
{
    private const int MaxHeaderBytes = 1 << 20;
    private static readonly JsonSerializerOptions JsonOptions = new() { WriteIndented = false };

    /// <summary>The weights as safetensors bytes, with their length and SHA-256 for the header.</summary>
    public static (byte[] Payload, long Length, string Sha256) Serialize(IReadOnlyDictionary<string, Tensor> weights)
    {
        using var buffer = new MemoryStream();
        Safetensors.Save(buffer, weights);
        var payload = buffer.ToArray();
        return (payload, payload.LongLength, Convert.ToHexString(SHA256.HashData(payload)));
    }

    public static void Write<THeader>(Stream stream, byte[] magic, THeader header, byte[] payload)
    {
        var headerBytes = JsonSerializer.SerializeToUtf8Bytes(header, JsonOptions);
        var prefix = new byte[magic.Length + 4];
        magic.CopyTo(prefix, 0);
        BinaryPrimitives.WriteInt32LittleEndian(prefix.AsSpan(magic.Length), headerBytes.Length);
        stream.Write(prefix);
        stream.Write(headerBytes);
        stream.Write(payload);
    }

    /// <summary>Reads and parses the header; <paramref name="what"/> names the object in messages ("encoder", "classifier").</summary>
    public static THeader ReadHeader<THeader>(Stream stream, byte[] magic, string what, string wrongMagicHint)
    {
        var prefix = ReadExactly(stream, magic.Length + 4, what, "its header");
        if (!prefix.AsSpan(0, magic.Length).SequenceEqual(magic))
        {
            throw new InvalidDataException($"not a BootMAE {what} file (wrong magic bytes). {wrongMagicHint}");
        }

        int headerLength = BinaryPrimitives.ReadInt32LittleEndian(prefix.AsSpan(magic.Length));
        if (headerLength <= 0 || headerLength > MaxHeaderBytes)
        {
            throw new InvalidDataException($"the {what} header length {headerLength} is invalid: the file is damaged.");
        }

        try
        {
            return JsonSerializer.Deserialize<THeader>(ReadExactly(stream, headerLength, what, "its header"), JsonOptions)
                ?? throw new InvalidDataException($"the {what} header is empty: the file is damaged.");
        }
        catch (Exception ex) when (ex is JsonException or NotSupportedException or ArgumentException)
        {
            throw new InvalidDataException($"the {what} header is not valid JSON ({ex.Message}): the file is damaged.", ex);
        }
    }

    /// <summary>
    /// Checks, before any module is built, that a header's architecture fits its payload: the float32 weights of
    /// <paramref name="weightCount"/> elements must be in the payload, so a small file that claims a huge network is
    /// refused instead of making libtorch allocate for it.
    /// </summary>
    /// <param name="payloadLength">The header's payload length (checked against the real bytes later).</param>
    /// <param name="weightCount">Weights the header's architecture needs (a lower bound; a double, so crafted sizes cannot overflow).</param>
    /// <param name="what">"encoder" or "classifier".</param>
    /// <param name="shape">The architecture, for the message.</param>
    public static void CheckPayloadHolds(long payloadLength, double weightCount, string what, string shape)
    {
        double needed = 4.0 * weightCount;
        if (!(needed <= payloadLength))
        {
            throw new InvalidDataException(
                $"the {what} header's architecture ({shape}) needs {weightCount:N0} weights ({needed:N0} bytes) but field 'PayloadLength' is {payloadLength:N0} bytes: the file is damaged or crafted.");
        }
    }

    /// <summary>Reads the payload, checks its SHA-256 and parses it (the caller disposes the tensors).</summary>
    public static Dictionary<string, Tensor> ReadWeights(Stream stream, long length, string sha256, string what)
    {
        if (length < 0 || length > int.MaxValue)
        {
            throw new InvalidDataException($"the {what} payload length {length} is invalid: the file is damaged.");
        }

        var payload = ReadExactly(stream, (int)length, what, "its weights");
        if (!string.Equals(Convert.ToHexString(SHA256.HashData(payload)), sha256, StringComparison.OrdinalIgnoreCase))
        {
            throw new InvalidDataException($"the {what} weights do not match their SHA-256 checksum: the file was altered or damaged.");
        }

        return Safetensors.Load(new MemoryStream(payload, writable: false), $"payload of the {what}");
    }

    private static byte[] ReadExactly(Stream stream, int length, string what, string part)
    {
        // Grows with the bytes really read, so a header that claims 2 GB in a small file costs nothing before it fails.
        var buffer = new byte[Math.Min(length, 1 << 20)];
        int read = 0;
        while (read < length)
        {
            if (read == buffer.Length)
            {
                Array.Resize(ref buffer, (int)Math.Min(length, 2L * buffer.Length));
            }

            int n = stream.Read(buffer, read, buffer.Length - read);
            if (n == 0)
            {
                throw new InvalidDataException($"the {what} data ends early while reading {part} ({read} of {length} bytes): the file is truncated.");
            }

            read += n;
        }

        return buffer;
    }
}
