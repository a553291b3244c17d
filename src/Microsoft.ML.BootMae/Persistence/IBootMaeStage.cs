using System.Text.Json.Nodes;

namespace Microsoft.ML.BootMae.Persistence;

/// <summary>A BootMAE transformer as stored in a model zip: its kind, its settings and its weights.</summary>
internal interface IBootMaeStage
{
    /// <summary>"encoder" or "classifier".</summary>
    string StageKind { get; }

    /// <summary>Everything but the weights needed to rebuild the transformer.</summary>
    JsonObject GetStageConfig();

    /// <summary>Writes the weights; must leave <paramref name="stream"/> open.</summary>
    void SaveWeights(Stream stream);
}
