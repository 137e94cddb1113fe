# Derived from hashicorp/terraform-provider-azurerm website/docs/r/healthcare_medtech_service*.html.markdown
# (MPL-2.0): the same resources, with the names and hub in variables and locals, the device
# mapping from a file, the FHIR mapping as a heredoc.

variable "eventhub_name" {
  type = string
}

variable "consumer_group" {
  type    = string
  default = "$Default"
}

locals {
  prefix    = "example"
  namespace = "${local.prefix}-eventhub-namespace"
}

resource "azurerm_healthcare_workspace" "example" {
  name                = "${local.prefix}wkspace"
  location            = "east us"
  resource_group_name = "example-rg"
}

resource "azurerm_healthcare_fhir_service" "example" {
  name                = "${local.prefix}fhir"
  location            = "east us"
  resource_group_name = "example-rg"
  workspace_id        = azurerm_healthcare_workspace.example.id
  kind                = "fhir-R4"
}

resource "azurerm_healthcare_medtech_service" "example" {
  name         = "${local.prefix}med"
  workspace_id = azurerm_healthcare_workspace.example.id
  location     = "east us"

  eventhub_namespace_name      = local.namespace
  eventhub_name                = var.eventhub_name
  eventhub_consumer_group_name = var.consumer_group

  device_mapping_json = file("${path.module}/devicecontent.json")
}

resource "azurerm_healthcare_medtech_service_fhir_destination" "example" {
  name                                 = "examplemtdes"
  location                             = "east us"
  medtech_service_id                   = azurerm_healthcare_medtech_service.example.id
  destination_fhir_service_id          = azurerm_healthcare_fhir_service.example.id
  destination_identity_resolution_type = "Lookup"

  destination_fhir_mapping_json = <<-JSON
    {
      "templateType": "CollectionFhirTemplate",
      "template": [
        {
          "templateType": "CodeValueFhir",
          "template": {
            "codes": [{"code": "8867-4", "system": "http://loinc.org", "display": "Heart rate"}],
            "periodInterval": 60,
            "typeName": "heartrate",
            "value": {"defaultPeriod": 5000, "unit": "count/min", "valueName": "hr", "valueType": "SampledData"}
          }
        }
      ]
    }
  JSON
}
