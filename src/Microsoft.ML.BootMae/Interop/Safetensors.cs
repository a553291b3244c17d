using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Interop;

// Minimal safetensors reader/writer: 8-byte little-endian header length, a JSON header
// {name: {dtype, shape, data_offsets: [begin, end]}} (offsets relative to the data section), then raw little-endian data.
// Pure data parsing: nothing in a file is ever executed. Reads F32, BF16 and F16 (returned as float32) and I64;
// writes F32 and I64.
internal static class Safetensors
{
    private const long MaxHeaderBytes = 100L * 1024 * 1024;

    /// <summary>Reads a safetensors file; every error is an <see cref="InvalidDataException"/> that names the file.</summary>
    public static Dictionary<string, Tensor> Load(string path)
    {
        using var stream = File.OpenRead(path);
        return Load(stream, $"'{path}'");
    }

    // The header's "__metadata__" string map (empty when absent). Call after Load has accepted the file: only the
    // header is read, and an entry that is not a string is skipped.
    public static Dictionary<string, string> ReadMetadata(string path)
    {
        var result = new Dictionary<string, string>(StringComparer.Ordinal);
        using var stream = File.OpenRead(path);
        Span<byte> length = stackalloc byte[8];
        stream.ReadExactly(length);
        long headerLength = BinaryPrimitives.ReadInt64LittleEndian(length);
        if (headerLength <= 0 || headerLength > MaxHeaderBytes)
        {
            return result;
        }

        var header = new byte[headerLength];
        stream.ReadExactly(header);
        using var doc = JsonDocument.Parse(header);
        if (doc.RootElement.TryGetProperty("__metadata__", out var metadata) && metadata.ValueKind == JsonValueKind.Object)
        {
            foreach (var entry in metadata.EnumerateObject().Where(e => e.Value.ValueKind == JsonValueKind.String))
            {
                result[entry.Name] = entry.Value.GetString()!;
            }
        }

        return result;
    }

    /// <summary>
    /// Reads safetensors data. The header is checked whole (JSON, field types, dtype, shape, element count, offsets
    /// inside the data section and not overlapping) before any tensor is built, so a crafted header cannot make
    /// libtorch allocate; every error is one <see cref="InvalidDataException"/> naming <paramref name="source"/>, the tensor and the field.
    /// </summary>
    public static Dictionary<string, Tensor> Load(Stream stream, string source = "safetensors data")
    {
        byte[] all;
        using (var copy = new MemoryStream())
        {
            stream.CopyTo(copy);
            all = copy.ToArray();
        }

        InvalidDataException Bad(string what) => new($"safetensors {source}: {what}");
        if (all.Length < 8)
        {
            throw Bad("file shorter than its 8-byte header length.");
        }

        long headerLength = BinaryPrimitives.ReadInt64LittleEndian(all.AsSpan(0, 8));
        if (headerLength <= 0 || headerLength > MaxHeaderBytes || headerLength > all.Length - 8)
        {
            throw Bad($"header length {headerLength} is out of bounds for a {all.Length}-byte file.");
        }

        int dataStart = 8 + (int)headerLength;
        long dataLength = all.Length - dataStart;
        var entries = ParseHeader(all.AsMemory(8, (int)headerLength), dataLength, Bad);
        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        try
        {
            foreach (var (name, dtype, shape, begin, end) in entries)
            {
                var bytes = all.AsSpan(dataStart + (int)begin, (int)(end - begin));
                result[name] = dtype switch
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

    private static List<(string Name, string Dtype, long[] Shape, long Begin, long End)> ParseHeader(ReadOnlyMemory<byte> header, long dataLength,
        Func<string, InvalidDataException> bad)
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(header);
        }
        catch (JsonException ex)
        {
            throw bad($"the header is not valid JSON ({ex.Message}).");
        }

        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
            {
                throw bad($"the header is a JSON {doc.RootElement.ValueKind}, not an object.");
            }

            var entries = new List<(string Name, string Dtype, long[] Shape, long Begin, long End)>();
            var names = new HashSet<string>(StringComparer.Ordinal);
            foreach (var entry in doc.RootElement.EnumerateObject())
            {
                if (entry.Name == "__metadata__")
                {
                    continue;
                }

                string name = entry.Name;
                if (!names.Add(name))
                {
                    throw bad($"tensor '{name}' appears twice in the header.");
                }

                if (entry.Value.ValueKind != JsonValueKind.Object)
                {
                    throw bad($"tensor '{name}' is a JSON {entry.Value.ValueKind}, not an object with dtype, shape and data_offsets.");
                }

                string dtype = Field(entry.Value, name, "dtype", JsonValueKind.String, bad).GetString()!;
                int elementSize = dtype switch
                {
                    "F32" => 4,
                    "BF16" or "F16" => 2,
                    "I64" => 8,
                    _ => throw bad($"tensor '{name}' field 'dtype': '{dtype}' is not supported (F32, BF16, F16, I64)."),
                };
                long[] shape = Integers(Field(entry.Value, name, "shape", JsonValueKind.Array, bad), name, "shape", bad);
                long[] offsets = Integers(Field(entry.Value, name, "data_offsets", JsonValueKind.Array, bad), name, "data_offsets", bad);
                if (shape.Any(d => d < 0))
                {
                    throw bad($"tensor '{name}' field 'shape': [{string.Join(", ", shape)}] has a negative dimension.");
                }

                long bytes;
                try
                {
                    // checked: a shape whose element count (or byte count) wraps around could otherwise match small offsets.
                    bytes = checked(shape.Aggregate(1L, (a, d) => checked(a * d)) * elementSize);
                }
                catch (OverflowException)
                {
                    throw bad($"tensor '{name}' field 'shape': [{string.Join(", ", shape)}] has more elements than can exist.");
                }

                if (offsets.Length != 2 || offsets[0] < 0 || offsets[1] < offsets[0] || offsets[1] > dataLength)
                {
                    throw bad($"tensor '{name}' field 'data_offsets': [{string.Join(", ", offsets)}] does not lie inside the {dataLength}-byte data section.");
                }

                if (offsets[1] - offsets[0] != bytes)
                {
                    throw bad($"tensor '{name}' field 'data_offsets': {offsets[1] - offsets[0]} bytes, but dtype {dtype} and shape [{string.Join(", ", shape)}] need {bytes}.");
                }

                entries.Add((name, dtype, shape, offsets[0], offsets[1]));
            }

            // Tensors must not share bytes: a crafted file could otherwise alias one payload under many names.
            var ordered = entries.Where(e => e.End > e.Begin).OrderBy(e => e.Begin).ToList();
            for (int i = 1; i < ordered.Count; i++)
            {
                if (ordered[i].Begin < ordered[i - 1].End)
                {
                    throw bad($"tensor '{ordered[i].Name}' field 'data_offsets': [{ordered[i].Begin}, {ordered[i].End}] overlaps tensor '{ordered[i - 1].Name}' [{ordered[i - 1].Begin}, {ordered[i - 1].End}].");
                }
            }

            return entries;
        }
    }

    private static JsonElement Field(JsonElement tensorEntry, string name, string field, JsonValueKind kind, Func<string, InvalidDataException> bad)
    {
        if (!tensorEntry.TryGetProperty(field, out var value))
        {
            throw bad($"tensor '{name}' has no field '{field}'.");
        }

        if (value.ValueKind != kind)
        {
            throw bad($"tensor '{name}' field '{field}' is a JSON {value.ValueKind}, expected {kind}.");
        }

        return value;
    }

    private static long[] Integers(JsonElement array, string name, string field, Func<string, InvalidDataException> bad)
    {
        var values = new List<long>();
        foreach (var item in array.EnumerateArray())
        {
            if (item.ValueKind != JsonValueKind.Number || !item.TryGetInt64(out long v))
            {
                throw bad($"tensor '{name}' field '{field}' holds {item.GetRawText()}, not a 64-bit integer.");
            }

            values.Add(v);
        }

        return values.ToArray();
    }

    // Writes int64 tensors as I64 and every other tensor as float32 (any device, converted to contiguous CPU data), keys
    // sorted for stable files. metadata, when given, becomes the header's "__metadata__" string map.
    public static void Save(string path, IReadOnlyDictionary<string, Tensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        using var stream = File.Create(path);
        Save(stream, tensors, metadata);
    }

    public static void Save(Stream stream, IReadOnlyDictionary<string, Tensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var names = tensors.Keys.OrderBy(k => k, StringComparer.Ordinal).ToList();
        var payloads = new List<byte[]>();
        var header = new StringBuilder("{");
        if (metadata is not null)
        {
            header.Append("\"__metadata__\":").Append(JsonSerializer.Serialize(metadata));
        }

        long offset = 0;
        foreach (var name in names)
        {
            var t = tensors[name];
            bool integer = t.dtype == ScalarType.Int64;
            using var cpu = t.detach().to(integer ? ScalarType.Int64 : ScalarType.Float32).cpu().contiguous();
            var data = integer ? LittleEndianBytes(cpu.data<long>().ToArray()) : LittleEndianBytes(cpu.data<float>().ToArray());
            payloads.Add(data);
            long end = offset + data.Length;
            if (header.Length > 1)
            {
                header.Append(',');
            }

            header.Append(JsonSerializer.Serialize(name)).Append(integer ? ":{\"dtype\":\"I64\",\"shape\":[" : ":{\"dtype\":\"F32\",\"shape\":[")
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
            writer.Write(data);
        }
    }

    private static byte[] LittleEndianBytes(float[] values)
    {
        var bytes = new byte[4 * values.Length];
        for (int i = 0; i < values.Length; i++)
        {
            BinaryPrimitives.WriteSingleLittleEndian(bytes.AsSpan(4 * i, 4), values[i]);
        }

        return bytes;
    }

    private static byte[] LittleEndianBytes(long[] values)
    {
        var bytes = new byte[8 * values.Length];
        for (int i = 0; i < values.Length; i++)
        {
            BinaryPrimitives.WriteInt64LittleEndian(bytes.AsSpan(8 * i, 8), values[i]);
        }

        return bytes;
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
