using System.Globalization;
using System.Text.Json.Nodes;
using Microsoft.ML.Data;

namespace Microsoft.ML.BootMae.Classification;

/// <summary>
/// The label's key values (class names), kept so the classifier's output keeps ML.NET's annotations at prediction
/// time (when the label column is absent) and after save/load. Values are stored in their ML.NET type.
/// </summary>
internal sealed class LabelKeyValues
{
    private static readonly Dictionary<string, PrimitiveDataViewType> Types = new()
    {
        ["Text"] = TextDataViewType.Instance,
        ["Boolean"] = BooleanDataViewType.Instance,
        ["Single"] = NumberDataViewType.Single,
        ["Double"] = NumberDataViewType.Double,
        ["SByte"] = NumberDataViewType.SByte,
        ["Byte"] = NumberDataViewType.Byte,
        ["Int16"] = NumberDataViewType.Int16,
        ["UInt16"] = NumberDataViewType.UInt16,
        ["Int32"] = NumberDataViewType.Int32,
        ["UInt32"] = NumberDataViewType.UInt32,
        ["Int64"] = NumberDataViewType.Int64,
        ["UInt64"] = NumberDataViewType.UInt64,
    };

    private LabelKeyValues(PrimitiveDataViewType itemType, string[] values)
    {
        ItemType = itemType;
        Values = values;
    }

    /// <summary>Type of the values (Text for class names).</summary>
    internal PrimitiveDataViewType ItemType { get; }

    /// <summary>The values as invariant strings, in key order (key 1 first).</summary>
    internal string[] Values { get; }

    /// <summary>Reads the label column's KeyValues annotation; null when it has none (or of an unsupported type).</summary>
    internal static LabelKeyValues? FromColumn(DataViewSchema.Column label, int count)
    {
        var annotation = label.Annotations.Schema.GetColumnOrNull("KeyValues");
        if (annotation is not { Type: VectorDataViewType { ItemType: PrimitiveDataViewType item } } || !Types.ContainsValue(item))
        {
            return null;
        }

        var values = item.RawType switch
        {
            var t when t == typeof(ReadOnlyMemory<char>) => Read<ReadOnlyMemory<char>>(label, count, v => v.ToString()),
            var t when t == typeof(bool) => Read<bool>(label, count, v => v.ToString(CultureInfo.InvariantCulture)),
            var t when t == typeof(float) => Read<float>(label, count, v => v.ToString("R", CultureInfo.InvariantCulture)),
            var t when t == typeof(double) => Read<double>(label, count, v => v.ToString("R", CultureInfo.InvariantCulture)),
            var t when t == typeof(sbyte) => Read<sbyte>(label, count, v => v.ToString(CultureInfo.InvariantCulture)),
            var t when t == typeof(byte) => Read<byte>(label, count, v => v.ToString(CultureInfo.InvariantCulture)),
            var t when t == typeof(short) => Read<short>(label, count, v => v.ToString(CultureInfo.InvariantCulture)),
            var t when t == typeof(ushort) => Read<ushort>(label, count, v => v.ToString(CultureInfo.InvariantCulture)),
            var t when t == typeof(int) => Read<int>(label, count, v => v.ToString(CultureInfo.InvariantCulture)),
            var t when t == typeof(uint) => Read<uint>(label, count, v => v.ToString(CultureInfo.InvariantCulture)),
            var t when t == typeof(long) => Read<long>(label, count, v => v.ToString(CultureInfo.InvariantCulture)),
            _ => Read<ulong>(label, count, v => v.ToString(CultureInfo.InvariantCulture)),
        };
        return new LabelKeyValues(item, values);
    }

    private static string[] Read<T>(DataViewSchema.Column label, int count, Func<T, string> format)
    {
        VBuffer<T> buffer = default;
        label.GetKeyValues(ref buffer);
        var dense = buffer.DenseValues().Take(count).Select(format).ToList();
        while (dense.Count < count)
        {
            dense.Add(string.Empty);
        }

        return dense.ToArray();
    }

    /// <summary>Adds the values as a vector annotation of <paramref name="kind"/> (KeyValues or TrainingLabelValues).</summary>
    internal void AddTo(DataViewSchema.Annotations.Builder builder, string kind)
    {
        var type = new VectorDataViewType(ItemType, Values.Length);
        switch (ItemType.RawType)
        {
            case var t when t == typeof(ReadOnlyMemory<char>): Add(builder, kind, type, v => v.AsMemory()); break;
            case var t when t == typeof(bool): Add(builder, kind, type, v => bool.Parse(v)); break;
            case var t when t == typeof(float): Add(builder, kind, type, v => float.Parse(v, CultureInfo.InvariantCulture)); break;
            case var t when t == typeof(double): Add(builder, kind, type, v => double.Parse(v, CultureInfo.InvariantCulture)); break;
            case var t when t == typeof(sbyte): Add(builder, kind, type, v => sbyte.Parse(v, CultureInfo.InvariantCulture)); break;
            case var t when t == typeof(byte): Add(builder, kind, type, v => byte.Parse(v, CultureInfo.InvariantCulture)); break;
            case var t when t == typeof(short): Add(builder, kind, type, v => short.Parse(v, CultureInfo.InvariantCulture)); break;
            case var t when t == typeof(ushort): Add(builder, kind, type, v => ushort.Parse(v, CultureInfo.InvariantCulture)); break;
            case var t when t == typeof(int): Add(builder, kind, type, v => int.Parse(v, CultureInfo.InvariantCulture)); break;
            case var t when t == typeof(uint): Add(builder, kind, type, v => uint.Parse(v, CultureInfo.InvariantCulture)); break;
            case var t when t == typeof(long): Add(builder, kind, type, v => long.Parse(v, CultureInfo.InvariantCulture)); break;
            default: Add(builder, kind, type, v => ulong.Parse(v, CultureInfo.InvariantCulture)); break;
        }
    }

    private void Add<T>(DataViewSchema.Annotations.Builder builder, string kind, VectorDataViewType type, Func<string, T> parse)
    {
        var values = new VBuffer<T>(Values.Length, Values.Select(parse).ToArray());
        builder.Add(kind, type, (ref VBuffer<T> dst) => values.CopyTo(ref dst));
    }

    /// <summary>The values as text (slot names of the score vector).</summary>
    internal VBuffer<ReadOnlyMemory<char>> AsSlotNames() => new(Values.Length, Values.Select(v => v.AsMemory()).ToArray());

    internal JsonObject ToJson() => new()
    {
        ["type"] = Types.First(p => p.Value.Equals(ItemType)).Key,
        ["values"] = new JsonArray(Values.Select(v => (JsonNode?)JsonValue.Create(v)).ToArray()),
    };

    internal static LabelKeyValues? FromJson(JsonNode? node)
    {
        if (node is not JsonObject json)
        {
            return null;
        }

        var typeName = (string)json["type"]!;
        if (!Types.TryGetValue(typeName, out var type))
        {
            throw new InvalidDataException($"unknown key value type '{typeName}'");
        }

        return new LabelKeyValues(type, ((JsonArray)json["values"]!).Select(v => (string)v!).ToArray());
    }
}
