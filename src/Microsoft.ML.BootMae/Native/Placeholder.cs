namespace Microsoft.ML.BootMae.Native;

internal static class Placeholder
{
}
