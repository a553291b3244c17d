using Microsoft.ML.Data;

namespace Microsoft.ML.BootMae.DataViews;

/// <summary>The three image column types the BootMAE components accept.</summary>
internal enum ImageColumnKind
{
    /// <summary><c>VarVector&lt;Byte&gt;</c> of encoded image bytes from <c>LoadRawImageBytes</c>.</summary>
    EncodedBytes,

    /// <summary><c>Image</c> (<see cref="MLImage"/>) from <c>LoadImages</c>, resized or not.</summary>
    Image,

    /// <summary><c>Vector&lt;Single, C, H, W&gt;</c> of 0..255 values from <c>ExtractPixels</c> with its defaults.</summary>
    Pixels,
}

/// <summary>A resolved image column: where it is and how to read it.</summary>
internal sealed record ImageColumnInfo(string Name, int Index, ImageColumnKind Kind, int Channels, int Height, int Width);

/// <summary>Schema checks for image and label columns, with ML.NET's wording plus a hint at the fix.</summary>
internal static class ImageColumn
{
    internal const string TypeHint =
        "Expected encoded image bytes (VarVector<Byte> from mlContext.Transforms.LoadRawImageBytes), an Image (from " +
        "mlContext.Transforms.LoadImages, optionally followed by ResizeImages) or a Vector<Single> of [C,H,W] pixels " +
        "(from mlContext.Transforms.ExtractPixels with its defaults).";

    /// <summary>Finds and classifies the image column of a live schema.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The column is missing or of an unsupported type.</exception>
    internal static ImageColumnInfo Resolve(DataViewSchema schema, string columnName, string parameterName = "inputSchema")
    {
        var column = schema.GetColumnOrNull(columnName)
            ?? throw new ArgumentOutOfRangeException(parameterName,
                $"Could not find image column '{columnName}'. Load images first, e.g. mlContext.Transforms.LoadRawImageBytes(\"{columnName}\", imageFolder, \"ImagePath\"), or set ImageColumnName." +
                (parameterName == "ValidationSet" ? " The ValidationSet is not passed through the pipeline: transform it with the same preprocessing first (fit the steps before the trainer and call Transform on the validation data)." : string.Empty));
        var type = column.Type;
        if (type is VectorDataViewType { ItemType: NumberDataViewType } bytes && bytes.ItemType.RawType == typeof(byte) && !bytes.IsKnownSize)
        {
            return new ImageColumnInfo(columnName, column.Index, ImageColumnKind.EncodedBytes, 0, 0, 0);
        }

        if (type.RawType == typeof(MLImage))
        {
            return new ImageColumnInfo(columnName, column.Index, ImageColumnKind.Image, 0, 0, 0);
        }

        if (type is VectorDataViewType pixels && pixels.ItemType == NumberDataViewType.Single)
        {
            var dims = pixels.Dimensions;
            if (dims.Length == 3 && dims[0] is 1 or 3 or 4 && dims[1] > 0 && dims[2] > 0)
            {
                return new ImageColumnInfo(columnName, column.Index, ImageColumnKind.Pixels, dims[0], dims[1], dims[2]);
            }

            throw new ArgumentOutOfRangeException(parameterName,
                $"Schema mismatch for image column '{columnName}': expected Vector<Single, C, H, W> with C of 1, 3 or 4, got {type}. " +
                "Use mlContext.Transforms.ExtractPixels with its defaults (planar, 0..255), or give encoded bytes or images. " + TypeHint);
        }

        throw new ArgumentOutOfRangeException(parameterName,
            $"Schema mismatch for image column '{columnName}': expected VarVector<Byte>, Image or Vector<Single, C, H, W>, got {type}. " + TypeHint);
    }

    /// <summary>Checks the image column of an estimator's input shape (only what a <see cref="SchemaShape"/> knows).</summary>
    internal static void CheckShape(SchemaShape inputSchema, string columnName)
    {
        if (Find(inputSchema, columnName) is not { } column)
        {
            throw new ArgumentOutOfRangeException(nameof(inputSchema),
                $"Could not find image column '{columnName}'. Load images first, e.g. mlContext.Transforms.LoadRawImageBytes(\"{columnName}\", imageFolder, \"ImagePath\"), or set ImageColumnName.");
        }

        var ok = column.Kind switch
        {
            SchemaShape.Column.VectorKind.VariableVector => column.ItemType.RawType == typeof(byte),
            SchemaShape.Column.VectorKind.Vector => column.ItemType == NumberDataViewType.Single,
            SchemaShape.Column.VectorKind.Scalar => column.ItemType.RawType == typeof(MLImage),
            _ => false,
        };
        if (!ok || column.IsKey)
        {
            throw new ArgumentOutOfRangeException(nameof(inputSchema),
                $"Schema mismatch for image column '{columnName}': expected VarVector<Byte>, Image or Vector<Single, C, H, W>, got {Describe(column)}. " + TypeHint);
        }
    }

    /// <summary>Checks a label column of a live schema: <c>Key&lt;UInt32&gt;</c> with a known count of at least 2.</summary>
    internal static KeyDataViewType ResolveLabel(DataViewSchema schema, string labelColumnName, string parameterName = "inputSchema")
    {
        var column = schema.GetColumnOrNull(labelColumnName)
            ?? throw new ArgumentOutOfRangeException(parameterName,
                $"Could not find label column '{labelColumnName}'. Set LabelColumnName, or map a value column to a key with mlContext.Transforms.Conversion.MapValueToKey(\"{labelColumnName}\").");
        if (column.Type is not KeyDataViewType key || key.RawType != typeof(uint))
        {
            throw new ArgumentOutOfRangeException(parameterName,
                $"Schema mismatch for label column '{labelColumnName}': expected Key<UInt32>, got {column.Type}. " +
                $"Add mlContext.Transforms.Conversion.MapValueToKey(\"{labelColumnName}\") before the trainer.");
        }

        if (key.Count < 2 || key.Count > int.MaxValue)
        {
            throw new ArgumentOutOfRangeException(parameterName,
                $"Label column '{labelColumnName}' has {key.Count} classes; image classification needs at least 2.");
        }

        return key!;
    }

    /// <summary>Checks a label column of an estimator's input shape.</summary>
    internal static void CheckLabelShape(SchemaShape inputSchema, string labelColumnName)
    {
        if (Find(inputSchema, labelColumnName) is not { } column)
        {
            throw new ArgumentOutOfRangeException(nameof(inputSchema),
                $"Could not find label column '{labelColumnName}'. Set LabelColumnName, or map a value column to a key with mlContext.Transforms.Conversion.MapValueToKey(\"{labelColumnName}\").");
        }

        if (!column.IsKey || column.Kind != SchemaShape.Column.VectorKind.Scalar || column.ItemType.RawType != typeof(uint))
        {
            throw new ArgumentOutOfRangeException(nameof(inputSchema),
                $"Schema mismatch for label column '{labelColumnName}': expected Key<UInt32>, got {Describe(column)}. " +
                $"Add mlContext.Transforms.Conversion.MapValueToKey(\"{labelColumnName}\") before the trainer.");
        }
    }

    /// <summary>The column of a shape with the given name (the last one, as ML.NET resolves duplicates), or null.</summary>
    internal static SchemaShape.Column? Find(SchemaShape shape, string name)
    {
        SchemaShape.Column? found = null;
        foreach (var column in shape)
        {
            if (column.Name == name)
            {
                found = column;
            }
        }

        return found;
    }

    private static string Describe(SchemaShape.Column column)
    {
        var item = column.IsKey ? $"Key<{column.ItemType.RawType.Name}>" : $"{column.ItemType}";
        return column.Kind switch
        {
            SchemaShape.Column.VectorKind.Vector => $"Vector<{item}>",
            SchemaShape.Column.VectorKind.VariableVector => $"VarVector<{item}>",
            _ => item,
        };
    }
}
