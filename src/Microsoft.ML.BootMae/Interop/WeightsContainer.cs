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
        catch (JsonException ex)
        {
            throw new InvalidDataException($"the {what} header is not valid JSON ({ex.Message}): the file is damaged.", ex);
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
        if (Convert.ToHexString(SHA256.HashData(payload)) != sha256)
        {
            throw new InvalidDataException($"the {what} weights do not match their SHA-256 checksum: the file was altered or damaged.");
        }

        return Safetensors.Load(new MemoryStream(payload, writable: false));
    }

    private static byte[] ReadExactly(Stream stream, int length, string what, string part)
    {
        var buffer = new byte[length];
        int read = 0;
        while (read < length)
        {
            int n = stream.Read(buffer, read, length - read);
            if (n == 0)
            {
                throw new InvalidDataException($"the {what} data ends early while reading {part} ({read} of {length} bytes): the file is truncated.");
            }

            read += n;
        }

        return buffer;
    }
}
