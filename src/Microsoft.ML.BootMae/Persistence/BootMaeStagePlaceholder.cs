using Microsoft.ML.Data;
using Microsoft.ML.Transforms;

namespace Microsoft.ML.BootMae.Persistence;

/// <summary>The (column-less) input row of the placeholder mapping.</summary>
internal sealed class PlaceholderRow
{
}

/// <summary>
/// Stands in for a BootMAE stage inside ML.NET's own model record: ML.NET saves a CustomMapping with this contract
/// name, and <see cref="BootMaeModelArchive"/> swaps it for the real transformer on load. Outside
/// <c>LoadBootMae</c> the factory throws, so a plain <c>mlContext.Model.Load</c> fails at once with guidance.
/// </summary>
[CustomMappingFactoryAttribute(ContractName)]
internal sealed class BootMaeStagePlaceholderFactory : CustomMappingFactory<PlaceholderRow, PlaceholderRow>
{
    internal const string ContractName = "Microsoft.ML.BootMae.Stage.v1";

    internal const string PlainLoadMessage =
        "This model contains BootMAE components, whose weights ML.NET's Model.Load cannot read. " +
        "Load it with mlContext.Model.LoadBootMae(path, out var schema) (using Microsoft.ML;).";

    private static readonly object Gate = new();
    private static ITransformer? _placeholder;

    /// <summary>The mapping; only available while <see cref="BootMaeModelArchive"/> is loading a model.</summary>
    public override Action<PlaceholderRow, PlaceholderRow> GetMapping()
    {
        if (!BootMaeModelArchive.IsLoading)
        {
            throw new InvalidOperationException(PlainLoadMessage);
        }

        return Map;
    }

    private static void Map(PlaceholderRow input, PlaceholderRow output)
    {
    }

    /// <summary>One fitted placeholder transformer, whose save writes ML.NET's CustomMapping record.</summary>
    internal static ITransformer Placeholder
    {
        get
        {
            lock (Gate)
            {
                if (_placeholder is null)
                {
                    var ml = new MLContext(seed: 0);
                    var empty = ml.Data.LoadFromEnumerable(Array.Empty<PlaceholderRow>());
                    _placeholder = ml.Transforms.CustomMapping<PlaceholderRow, PlaceholderRow>(Map, ContractName).Fit(empty);
                }

                return _placeholder;
            }
        }
    }

    /// <summary>Whether a loaded transformer is one of our placeholders.</summary>
    internal static bool IsPlaceholder(ITransformer transformer) => transformer is CustomMappingTransformer<PlaceholderRow, PlaceholderRow>;
}
