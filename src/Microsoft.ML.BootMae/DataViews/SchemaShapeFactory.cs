using Microsoft.ML.Data;

namespace Microsoft.ML.BootMae.DataViews;

/// <summary>
/// Builds <see cref="SchemaShape"/> columns, whose constructor is internal to ML.NET, by asking public ML.NET
/// estimators for their output shape: a no-op <c>CustomMapping</c> with an output schema definition for float
/// vectors (with annotations), and <c>CopyColumns</c> for a key column that keeps the label's key values.
/// </summary>
internal static class SchemaShapeFactory
{
    private static readonly MLContext Ml = new(seed: 0);

    /// <summary>The input shape with its columns of the same names replaced by (or extended with) <paramref name="added"/>.</summary>
    internal static SchemaShape Merge(SchemaShape input, IEnumerable<SchemaShape.Column> added)
    {
        var columns = input.ToDictionary(c => c.Name);
        var order = input.Select(c => c.Name).ToList();
        foreach (var column in added)
        {
            if (!columns.ContainsKey(column.Name))
            {
                order.Add(column.Name);
            }

            columns[column.Name] = column;
        }

        return new SchemaShape(order.Select(n => columns[n]));
    }

    /// <summary>A known-size float vector column (the size itself is not part of a shape).</summary>
    /// <param name="name">Column name.</param>
    /// <param name="annotationKinds">Annotation kinds to declare (values are placeholders; a shape records only the kinds).</param>
    /// <param name="itemType">The item type; single-precision floats unless given.</param>
    /// <param name="typedAnnotations">Annotation kinds with their types (key or text vector).</param>
    internal static SchemaShape.Column FloatVector(string name, IEnumerable<string>? annotationKinds = null, DataViewType? itemType = null,
        IEnumerable<(string Kind, DataViewType Type)>? typedAnnotations = null)
    {
        var definition = SchemaDefinition.Create(typeof(VectorRow));
        var column = definition[0];
        column.ColumnName = name;
        column.ColumnType = new VectorDataViewType((PrimitiveDataViewType)(itemType ?? NumberDataViewType.Single), 2);
        foreach (var kind in annotationKinds ?? Array.Empty<string>())
        {
            column.AddAnnotation(kind, "placeholder".AsMemory(), TextDataViewType.Instance);
        }

        foreach (var (kind, type) in typedAnnotations ?? Array.Empty<(string, DataViewType)>())
        {
            if (type is KeyDataViewType)
            {
                column.AddAnnotation(kind, 1u, type);
            }
            else
            {
                column.AddAnnotation(kind, new VBuffer<ReadOnlyMemory<char>>(2, new[] { "a".AsMemory(), "b".AsMemory() }), type);
            }
        }

        var estimator = Ml.Transforms.CustomMapping<EmptyRow, VectorRow>((_, _) => { }, contractName: null, outputSchemaDefinition: definition);
        return Find(estimator.GetOutputSchema(new SchemaShape(Array.Empty<SchemaShape.Column>())), name);
    }

    /// <summary>A copy of the <paramref name="source"/> key column (with its KeyValues) under <paramref name="name"/>.</summary>
    internal static SchemaShape.Column CopyOf(SchemaShape input, string source, string name)
    {
        var estimator = Ml.Transforms.CopyColumns(name, source);
        return Find(estimator.GetOutputSchema(input), name);
    }

    private static SchemaShape.Column Find(SchemaShape shape, string name) =>
        ImageColumn.Find(shape, name) ?? throw new InvalidOperationException($"ML.NET did not produce the column '{name}'.");

    /// <summary>A row with no columns (the mapping's input).</summary>
    internal sealed class EmptyRow
    {
    }

    /// <summary>A row with one float vector column (renamed by the schema definition).</summary>
    internal sealed class VectorRow
    {
        /// <summary>The vector.</summary>
        public float[] Value = Array.Empty<float>();
    }
}
