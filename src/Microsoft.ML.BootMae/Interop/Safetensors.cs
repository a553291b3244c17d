using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Interop;

// Minimal safetensors reader/writer: 8-byte little-endian header length, a JSON header
// {name: {dtype, shape, data_offsets: [begin, end]}} (offsets relative to the data section), then raw little-endian data.
// Pure data parsing: nothing in a file is ever executed. Reads F32, BF16 and F16 (returned as float32) and I64;
// writes F32.
internal static class Safetensors
{
    private const long MaxHeaderBytes = 100L * 1024 * 1024;

    public static Dictionary<string, Tensor> Load(string path)
    {
        using var stream = File.OpenRead(path);
        return Load(stream);
    }

    public static Dictionary<string, Tensor> Load(Stream stream)
    {
        byte[] all;
        using (var copy = new MemoryStream())
        {
            stream.CopyTo(copy);
            all = copy.ToArray();
        }

        if (all.Length < 8)
        {
            throw new InvalidDataException("safetensors: file shorter than its 8-byte header length.");
        }

        long headerLength = BinaryPrimitives.ReadInt64LittleEndian(all.AsSpan(0, 8));
        if (headerLength <= 0 || headerLength > MaxHeaderBytes || headerLength > all.Length - 8)
        {
            throw new InvalidDataException($"safetensors: header length {headerLength} is out of bounds for a {all.Length}-byte file.");
        }

        int dataStart = 8 + (int)headerLength;
        long dataLength = all.Length - dataStart;
        using var doc = JsonDocument.Parse(all.AsMemory(8, (int)headerLength));
        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        try
        {
            foreach (var entry in doc.RootElement.EnumerateObject())
            {
                if (entry.Name == "__metadata__")
                {
                    continue;
                }

                string dtype = entry.Value.GetProperty("dtype").GetString() ?? string.Empty;
                long[] shape = entry.Value.GetProperty("shape").EnumerateArray().Select(e => e.GetInt64()).ToArray();
                long[] offsets = entry.Value.GetProperty("data_offsets").EnumerateArray().Select(e => e.GetInt64()).ToArray();
                long count = shape.Aggregate(1L, (a, b) => checked(a * b));
                int elementSize = dtype switch
                {
                    "F32" => 4,
                    "BF16" or "F16" => 2,
                    "I64" => 8,
                    _ => throw new InvalidDataException($"safetensors: {entry.Name} has unsupported dtype '{dtype}'."),
                };
                if (offsets.Length != 2 || offsets[0] < 0 || offsets[1] < offsets[0] || offsets[1] > dataLength
                    || offsets[1] - offsets[0] != count * elementSize || shape.Any(s => s < 0))
                {
                    throw new InvalidDataException($"safetensors: {entry.Name} has offsets or a shape that do not fit the data section.");
                }

                var bytes = all.AsSpan(dataStart + (int)offsets[0], (int)(offsets[1] - offsets[0]));
                result[entry.Name] = dtype switch
                {
                    "F32" => tensor(ReadFloats(bytes), shape),
                    "BF16" => tensor(ReadBFloat16(bytes), shape),
                    "F16" => tensor(ReadHalf(bytes), shape),
                    _ => tensor(ReadLongs(bytes), shape),
                };
            }
        }
        catch
        {
            foreach (var t in result.Values)
            {
                t.Dispose();
            }

            throw;
        }

        return result;
    }

    // Writes float32 tensors (any device, converted to contiguous CPU float32), keys sorted for stable files.
    public static void Save(string path, IReadOnlyDictionary<string, Tensor> tensors)
    {
        using var stream = File.Create(path);
        Save(stream, tensors);
    }

    public static void Save(Stream stream, IReadOnlyDictionary<string, Tensor> tensors)
    {
        var names = tensors.Keys.OrderBy(k => k, StringComparer.Ordinal).ToList();
        var payloads = new List<float[]>();
        var header = new StringBuilder("{");
        long offset = 0;
        foreach (var name in names)
        {
            var t = tensors[name];
            using var cpu = t.detach().to(ScalarType.Float32).cpu().contiguous();
            var data = cpu.data<float>().ToArray();
            payloads.Add(data);
            long end = offset + (4L * data.Length);
            if (header.Length > 1)
            {
                header.Append(',');
            }

            header.Append(JsonSerializer.Serialize(name)).Append(":{\"dtype\":\"F32\",\"shape\":[")
                .Append(string.Join(",", t.shape)).Append("],\"data_offsets\":[").Append(offset).Append(',').Append(end).Append("]}");
            offset = end;
        }

        header.Append('}');
        // Pad the header with spaces to a multiple of 8 bytes, as the reference writer does.
        var headerBytes = Encoding.UTF8.GetBytes(header.ToString());
        int padded = (headerBytes.Length + 7) / 8 * 8;
        using var writer = new BinaryWriter(stream, Encoding.UTF8, leaveOpen: true);
        writer.Write((long)padded);
        writer.Write(headerBytes);
        for (int i = headerBytes.Length; i < padded; i++)
        {
            writer.Write((byte)' ');
        }

        foreach (var data in payloads)
        {
            foreach (var v in data)
            {
                writer.Write(v);
            }
        }
    }

    private static float[] ReadFloats(ReadOnlySpan<byte> bytes)
    {
        var values = new float[bytes.Length / 4];
        for (int i = 0; i < values.Length; i++)
        {
            values[i] = BinaryPrimitives.ReadSingleLittleEndian(bytes.Slice(4 * i, 4));
        }

        return values;
    }

    private static float[] ReadBFloat16(ReadOnlySpan<byte> bytes)
    {
        var values = new float[bytes.Length / 2];
        for (int i = 0; i < values.Length; i++)
        {
            values[i] = BitConverter.Int32BitsToSingle(BinaryPrimitives.ReadUInt16LittleEndian(bytes.Slice(2 * i, 2)) << 16);
        }

        return values;
    }

    private static float[] ReadHalf(ReadOnlySpan<byte> bytes)
    {
        var values = new float[bytes.Length / 2];
        for (int i = 0; i < values.Length; i++)
        {
            values[i] = (float)BinaryPrimitives.ReadHalfLittleEndian(bytes.Slice(2 * i, 2));
        }

        return values;
    }

    private static long[] ReadLongs(ReadOnlySpan<byte> bytes)
    {
        var values = new long[bytes.Length / 8];
        for (int i = 0; i < values.Length; i++)
        {
            values[i] = BinaryPrimitives.ReadInt64LittleEndian(bytes.Slice(8 * i, 8));
        }

        return values;
    }
}
