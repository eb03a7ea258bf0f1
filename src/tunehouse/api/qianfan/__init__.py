"""The Qianfan dialect: the V2 console API (Action=...) and the V1 wenxinworkshop API, BCE-signed."""
