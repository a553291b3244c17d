using System.Runtime.InteropServices;
using Google.Protobuf;
using Onnx;

namespace Microsoft.ML.BootMae.OnnxExport;

/// <summary>
/// Builds an ONNX graph node by node on the message classes that Grpc.Tools' protoc generates from ONNX's own
/// <c>onnx.proto3</c>: names values, stores float32 weights as little-endian <c>raw_data</c> and returns the names of
/// node outputs, so the exporter reads like the network's forward pass.
/// </summary>
internal sealed class OnnxGraphBuilder
{
    private readonly GraphProto _graph;
    private readonly HashSet<string> _names = new(StringComparer.Ordinal);
    private int _counter;

    public OnnxGraphBuilder(string graphName)
    {
        if (!BitConverter.IsLittleEndian)
        {
            // raw_data is little-endian by definition; the weights are copied as they lie in memory.
            throw new PlatformNotSupportedException("ONNX export needs a little-endian machine.");
        }

        _graph = new GraphProto { Name = graphName };
    }

    /// <summary>Bytes of weights stored so far.</summary>
    public long InitializerBytes { get; private set; }

    /// <summary>A float32 initializer of the given shape.</summary>
    public string Floats(string name, ReadOnlySpan<float> values, params long[] dims)
    {
        long count = dims.Aggregate(1L, (a, b) => a * b);
        if (count != values.Length)
        {
            throw new InvalidOperationException($"ONNX initializer '{name}': {values.Length} values for shape [{string.Join(", ", dims)}].");
        }

        var tensor = new TensorProto { Name = Unique(name), DataType = (int)TensorProto.Types.DataType.Float };
        tensor.Dims.AddRange(dims);
        tensor.RawData = ByteString.CopyFrom(MemoryMarshal.AsBytes(values));
        InitializerBytes += tensor.RawData.Length;
        _graph.Initializer.Add(tensor);
        return tensor.Name;
    }

    /// <summary>A float32 scalar (rank 0) initializer.</summary>
    public string Scalar(string name, float value) => Floats(name, new[] { value });

    /// <summary>A 1-D int64 initializer (shapes, axes, indices).</summary>
    public string Int64s(string name, params long[] values)
    {
        var tensor = new TensorProto { Name = Unique(name), DataType = (int)TensorProto.Types.DataType.Int64 };
        tensor.Dims.Add(values.Length);
        tensor.Int64Data.AddRange(values);
        _graph.Initializer.Add(tensor);
        return tensor.Name;
    }

    /// <summary>An int64 scalar (rank 0) initializer, e.g. a Gather index that drops its axis.</summary>
    public string Int64Scalar(string name, long value)
    {
        var tensor = new TensorProto { Name = Unique(name), DataType = (int)TensorProto.Types.DataType.Int64 };
        tensor.Int64Data.Add(value);
        _graph.Initializer.Add(tensor);
        return tensor.Name;
    }

    /// <summary>Adds a node of the default ONNX domain with one output and returns the output's name.</summary>
    public string Node(string opType, string output, string[] inputs, params AttributeProto[] attributes)
    {
        var node = new NodeProto { OpType = opType, Name = Unique(output + "/" + opType) };
        node.Input.AddRange(inputs);
        var name = Unique(output);
        node.Output.Add(name);
        node.Attribute.AddRange(attributes);
        _graph.Node.Add(node);
        return name;
    }

    /// <summary>A graph input or output of float32 or int64 elements; a string dimension is symbolic (dynamic).</summary>
    public void Input(string name, TensorProto.Types.DataType type, params object[] dims) => _graph.Input.Add(Value(name, type, dims));

    /// <summary>Declares the value <paramref name="value"/> as graph output <paramref name="name"/> (through an Identity when they differ).</summary>
    public void Output(string name, string value, TensorProto.Types.DataType type, params object[] dims)
    {
        if (value != name)
        {
            var node = new NodeProto { OpType = "Identity", Name = Unique(name + "/Identity") };
            node.Input.Add(value);
            node.Output.Add(name);
            _names.Add(name);
            _graph.Node.Add(node);
        }

        _graph.Output.Add(Value(name, type, dims));
    }

    /// <summary>An int attribute.</summary>
    public static AttributeProto Int(string name, long value) => new() { Name = name, Type = AttributeProto.Types.AttributeType.Int, I = value };

    /// <summary>An ints attribute.</summary>
    public static AttributeProto Ints(string name, params long[] values)
    {
        var attribute = new AttributeProto { Name = name, Type = AttributeProto.Types.AttributeType.Ints };
        attribute.Ints.AddRange(values);
        return attribute;
    }

    /// <summary>A float attribute.</summary>
    public static AttributeProto Float(string name, float value) => new() { Name = name, Type = AttributeProto.Types.AttributeType.Float, F = value };

    /// <summary>The finished model: IR version, opset, producer and metadata around the graph.</summary>
    public ModelProto ToModel(long irVersion, long opset, string docString, IEnumerable<KeyValuePair<string, string>> metadata)
    {
        var model = new ModelProto
        {
            IrVersion = irVersion,
            ProducerName = "Microsoft.ML.BootMae",
            ProducerVersion = typeof(OnnxGraphBuilder).Assembly.GetName().Version?.ToString() ?? "1.0.0.0",
            Domain = "ai.bootmae",
            ModelVersion = 1,
            DocString = docString,
            Graph = _graph,
        };
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = string.Empty, Version = opset });
        foreach (var (key, value) in metadata)
        {
            model.MetadataProps.Add(new StringStringEntryProto { Key = key, Value = value });
        }

        return model;
    }

    private static ValueInfoProto Value(string name, TensorProto.Types.DataType type, object[] dims)
    {
        var shape = new TensorShapeProto();
        foreach (var dim in dims)
        {
            shape.Dim.Add(dim switch
            {
                string symbol => new TensorShapeProto.Types.Dimension { DimParam = symbol },
                int size => new TensorShapeProto.Types.Dimension { DimValue = size },
                long size => new TensorShapeProto.Types.Dimension { DimValue = size },
                _ => throw new ArgumentException($"Dimension {dim} of '{name}' must be a size or a symbol.", nameof(dims)),
            });
        }

        return new ValueInfoProto
        {
            Name = name,
            Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)type, Shape = shape } },
        };
    }

    private string Unique(string name)
    {
        if (_names.Add(name))
        {
            return name;
        }

        string candidate;
        do
        {
            candidate = $"{name}_{++_counter}";
        }
        while (!_names.Add(candidate));
        return candidate;
    }
}
